// Lines out of the log's chunks, and the row elements that show them.

import { renderAnsi, terminalText } from './ansi.js';
import { el, fmtBytes, timeEl } from './dom.js';

const MAX_LINE_CHARS = 20000; // longer lines are cut on screen (the download has them whole)
const dec = new TextDecoder();

// Turns the log's chunks (bytes, each of one stream) into lines. A line is numbered by the rank of its
// newline in the whole log, as the query copy's line_no and `sed -n Np` count; a line a stream began
// in one chunk and ended in a later one (another stream's chunk between) is one line of its stream.
export class Assembler {
  constructor(line) {
    this.line = line; // newlines before the next byte fed
    this.pending = new Map(); // stream -> {off, parts, ts}: an unfinished line
  }

  feed(off, bytes, stream, ts, out) {
    let start = 0;
    for (let nl = bytes.indexOf(10); nl >= 0; nl = bytes.indexOf(10, start)) {
      const p = this.pending.get(stream);
      let raw = bytes.subarray(start, nl);
      let first = off + start, t = ts;
      if (p) {
        raw = concat([...p.parts, raw]);
        first = p.off;
        t = p.ts;
        this.pending.delete(stream);
      }
      this.line++;
      out.push({ off: first, end: off + nl + 1, n: this.line, c: this.line, stream, ts: t, text: dec.decode(raw) });
      start = nl + 1;
    }
    if (start < bytes.length) {
      const p = this.pending.get(stream);
      const rest = bytes.slice(start);
      if (p) p.parts.push(rest);
      else this.pending.set(stream, { off: off + start, parts: [rest], ts });
    }
  }

  partials() {
    return [...this.pending.entries()].map(([stream, p]) => (
      { off: p.off, end: null, n: null, stream, ts: p.ts, text: dec.decode(concat(p.parts)), partial: true }));
  }
}

function concat(arrays) {
  if (arrays.length === 1) return arrays[0];
  const out = new Uint8Array(arrays.reduce((n, a) => n + a.length, 0));
  let at = 0;
  for (const a of arrays) { out.set(a, at); at += a.length; }
  return out;
}

export const STREAM_CLASS = { stdout: 'o', stderr: 'e', unknown: 'u' };

export function rowElement(row, host) {
  const r = el('div', `r ${STREAM_CLASS[row.stream] || 'u'}${row.partial ? ' partial' : ''}`);
  r.dataset.stream = row.stream;
  if (row.n != null) r.dataset.n = row.n;
  r.append(el('span', 'n', row.n == null ? '' : String(row.n)));
  r.append(timeEl('span', 't', row.ts || null));
  if (host != null) { r.append(el('span', 'h', host)); r.dataset.host = host; }
  const x = el('span', 'x');
  let text = terminalText(row.text);
  const cut = text.length > MAX_LINE_CHARS;
  if (cut) text = text.slice(0, MAX_LINE_CHARS);
  renderAnsi(text, x);
  if (cut) x.append(el('span', 'cut', ` … ${row.text.length - MAX_LINE_CHARS} more characters (in the download)`));
  r.append(x);
  return r;
}

// c: the lines ended up to the row's end (for a skipped range, those before it)
export function skippedRow(m, c = null) {
  return { off: m.from, end: m.to, n: null, c, stream: 'skip', ts: null, text: `… ${fmtBytes(m.bytes)} dropped at the spool quota …` };
}

export function countNewlines(bytes) {
  let n = 0;
  for (let i = bytes.indexOf(10); i >= 0; i = bytes.indexOf(10, i + 1)) n++;
  return n;
}

// Lines out of the log's chunks, and the row elements that show them.

import { renderAnsi, terminalText } from './ansi.js';
import { el, fmtBytes, timeEl } from './dom.js';

const MAX_LINE_CHARS = 20000; // longer lines are cut on screen (the download has them whole)
const dec = new TextDecoder();

// Turns the log's chunks (bytes, each of one stream) into lines. A line is numbered by the rank of its
// newline in the whole log, as the query copy's line_no and `sed -n Np` count; a line a stream began
// in one chunk and ended in a later one (another stream's chunk between) is one line of its stream.
// Each stream's first line may have begun before the first byte fed: its row is marked `head`, and gets
// `before`, the bytes of it before that, once a reader finds them (range.js measureBefore).
export class Assembler {
  constructor(line) {
    this.line = line; // newlines before the next byte fed
    this.pending = new Map(); // stream -> {off, parts, ts, head}: an unfinished line
    this.fed = new Set(); // the streams fed so far
    this.before = {}; // stream -> bytes of its first line before the first byte fed
  }

  feed(off, bytes, stream, ts, out) {
    let start = 0;
    const first = !this.fed.has(stream);
    this.fed.add(stream);
    for (let nl = bytes.indexOf(10); nl >= 0; nl = bytes.indexOf(10, start)) {
      const p = this.pending.get(stream);
      let raw = bytes.subarray(start, nl);
      let from = off + start, t = ts, head = first && start === 0;
      if (p) {
        raw = concat([...p.parts, raw]);
        from = p.off;
        t = p.ts;
        head = p.head;
        this.pending.delete(stream);
      }
      this.line++;
      const row = { off: from, end: off + nl + 1, n: this.line, c: this.line, stream, ts: t, text: dec.decode(raw) };
      if (head) { row.head = true; row.before = this.before[stream] || 0; }
      out.push(row);
      start = nl + 1;
    }
    if (start < bytes.length) {
      const p = this.pending.get(stream);
      const rest = bytes.slice(start);
      if (p) p.parts.push(rest);
      else this.pending.set(stream, { off: off + start, parts: [rest], ts, head: first && start === 0 });
    }
  }

  partials() {
    return [...this.pending.entries()].map(([stream, p]) => ({ off: p.off, end: null, n: null, stream, ts: p.ts,
      text: dec.decode(concat(p.parts)), partial: true, before: p.head ? this.before[stream] || 0 : 0 }));
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
  const r = el('div', `r ${STREAM_CLASS[row.stream] || 'u'}${row.partial ? ' partial' : ''}${row.before ? ' cont' : ''}`);
  r.dataset.stream = row.stream;
  if (row.n != null) r.dataset.n = row.n;
  r.append(el('span', 'n', row.n == null ? '' : String(row.n)));
  r.append(timeEl('span', 't', row.ts || null));
  if (host != null) { r.append(el('span', 'h', host)); r.dataset.host = host; }
  const x = el('span', 'x');
  let text = terminalText(row.text);
  // what the row does not show: past MAX_LINE_CHARS, and the bytes of its line outside the bytes read (a
  // view opened inside a long line: `before`, and `after` for a line the window's end cuts), counted as
  // characters (exact for ASCII)
  const more = Math.max(0, text.length - MAX_LINE_CHARS) + (row.before || 0) + (row.after || 0);
  text = text.slice(0, MAX_LINE_CHARS);
  renderAnsi(text, x);
  if (more) x.append(el('span', 'cut', ` … ${more} more characters (in the download)`));
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

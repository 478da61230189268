// Lines out of the log's chunks, and the row elements that show them.

import { renderAnsi, terminalText } from './ansi.js';
import { el, fmtBytes, timeEl } from './dom.js';

const MAX_LINE_CHARS = 20000; // longer lines are cut on screen (the download has them whole)
const dec = new TextDecoder();

// Turns the log's chunks (bytes, each of one stream) into lines. A line is numbered by the rank of its
// newline in the whole log, as the query copy's line_no and `sed -n Np` count; a line a stream began
// in one chunk and ended in a later one (another stream's chunk between) is one line of its stream.
// Each stream's first line may have begun before the first byte fed: its row is marked `head`, keeps its bytes
// (`raw`: an earlier read's part of the line joins them, logview.js), and gets `before`, the bytes of it before
// that, once a reader finds them (range.js measureBefore; `low`: more may lie before, the walk gave up).
export class Assembler {
  constructor(line) {
    this.line = line; // newlines before the next byte fed
    this.pending = new Map(); // stream -> {off, parts, offs (each part's offset), ts, head}: an unfinished line
    this.fed = new Set(); // the streams fed so far
    this.before = {}; // stream -> bytes of its first line before the first byte fed
    this.low = new Set(); // the streams whose `before` is a lower bound
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
      // (a copy: a view of the read's buffer would keep all of it)
      if (head) Object.assign(row, { head: true, raw: raw.slice(), before: this.before[stream] || 0, low: this.low.has(stream) });
      out.push(row);
      start = nl + 1;
    }
    if (start < bytes.length) {
      const p = this.pending.get(stream);
      const rest = bytes.slice(start);
      if (p) { p.parts.push(rest); p.offs.push(off + start); }
      else this.pending.set(stream, { off: off + start, parts: [rest], offs: [off + start], ts, head: first && start === 0 });
    }
  }

  partials() {
    return [...this.pending.entries()].map(([stream, p]) => ({ off: p.off, end: null, n: null, stream, ts: p.ts,
      text: dec.decode(concat(p.parts)), partial: true, before: p.head ? this.before[stream] || 0 : 0,
      low: p.head && this.low.has(stream) }));
  }

  // The bytes of `stream`'s unfinished line that lie before offset `at` (null if none), for a window that
  // holds the rest of the line from `at` on: {off, parts, offs, ts, head, before, low}.
  partBefore(stream, at) {
    const p = this.pending.get(stream);
    if (!p || p.off >= at) return null;
    const k = p.offs.findIndex((o) => o >= at), n = k < 0 ? p.parts.length : k;
    const parts = p.parts.slice(0, n), offs = p.offs.slice(0, n), last = n - 1;
    parts[last] = parts[last].subarray(0, Math.min(parts[last].length, at - offs[last]));
    return { off: p.off, parts, offs, ts: p.ts, head: p.head, before: p.head ? this.before[stream] || 0 : 0,
      low: p.head && this.low.has(stream) };
  }
}

// A line's row with an earlier part of it in front (Assembler.partBefore): the row shows the line from there,
// and counts what lies before that. Its bytes joined, not its text: a character may straddle the two.
export function prependPart(row, part) {
  const raw = row.raw ? concat([...part.parts, row.raw]) : null;
  const text = raw ? dec.decode(raw) : dec.decode(concat(part.parts)) + row.text;
  return { ...row, off: part.off, ts: part.ts, text, raw, head: part.head, before: part.before, low: part.low };
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
  // begun before the bytes read (`before` of it there); or maybe (`low`): the scan back for its start gave up
  // (a line longer than 64 × 64 partial chunks, or the other stream's 6.4 M records between) having found none
  // of it, which says nothing either way (the index does not mark a chunk that goes on with a line)
  const begun = row.before ? ' cont' : row.low ? ' maybe' : '';
  const r = el('div', `r ${STREAM_CLASS[row.stream] || 'u'}${row.partial ? ' partial' : ''}${begun}`);
  if (begun === ' maybe') r.title = 'this line may have begun before: its start was not found (the download has it)';
  r.dataset.stream = row.stream;
  if (row.n != null) r.dataset.n = row.n;
  r.append(el('span', 'n', row.n == null ? '' : String(row.n)));
  r.append(timeEl('span', 't', row.ts || null));
  if (host != null) { r.append(el('span', 'h', host)); r.dataset.host = host; }
  const x = el('span', 'x');
  let text = terminalText(row.text);
  // what the row does not show: past MAX_LINE_CHARS, and the bytes of its line outside the bytes read (a
  // view opened inside a long line: `before`, and `after` for a line the window's end cuts), counted as
  // characters (exact for ASCII); `low`, `lowAfter`: a walk for them gave up, so more may lie there ("≥ N"; a
  // count of 0 shows no note, the line's "begun before" mark says it)
  const more = Math.max(0, text.length - MAX_LINE_CHARS) + (row.before || 0) + (row.after || 0);
  text = text.slice(0, MAX_LINE_CHARS);
  renderAnsi(text, x);
  const low = row.low || row.lowAfter;
  if (more) x.append(el('span', 'cut', ` … ${low ? '≥ ' : ''}${more} more characters (in the download)`));
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

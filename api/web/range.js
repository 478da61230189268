// Reading a log by Range: the chunk index of a byte range (GET …/index: each chunk's stream, time and the
// lines before it) and the bytes of its chunks, as numbered lines, with a marker row for each hole.

import { api, apiJSON } from './api.js';
import { fmtBytes } from './dom.js';
import { Assembler, skippedRow } from './lines.js';

export const CHUNK = 256 * 1024; // bytes per Range read
// what a hole's marker says, by the `reason` of the manifest's `dropped` entry
const WHY = { quota: 'dropped at the spool quota', damaged: 'lost to a damaged spool file',
  missing: 'lost (missing from the spool)' };

export const fetchIndex = (path, a, b, signal) => apiJSON(`${path}/index?start=${a}&end=${b}`, { signal });

async function fetchBytes(path, a, b, signal) {
  const r = await api(`${path}/log`, { headers: { Range: `bytes=${a}-${b - 1}` }, signal });
  return new Uint8Array(await r.arrayBuffer());
}

// The lines of `chunks` between offsets a and b, fed to `asm`. Bytes the log does not hold (dropped at the
// spool quota, lost to damage: no chunk covers them) are not asked for, since a Range across them is a
// 416 `bytes_missing`: each run of adjacent chunks is read by its own Range, and each hole between a and b
// shows as one marker row. `gaps` (the meta's `dropped`) names a hole's reason and adds its lines.
export async function readLines(path, chunks, a, b, asm, signal, gaps = []) {
  const out = [];
  if (b <= a || !chunks.length) return out;
  let pos = a, run = [];
  const flush = async () => {
    if (!run.length) return;
    const s = Math.max(run[0][0], a), e = Math.min(run[run.length - 1][0] + run[run.length - 1][1], b);
    const data = await fetchBytes(path, s, e, signal);
    for (const [off, len, , stream, , ts] of run) {
      const x = Math.max(off, s), y = Math.min(off + len, e);
      if (x < y) asm.feed(x, data.subarray(x - s, y - s), stream, ts, out);
    }
    run = [];
  };
  for (const c of chunks) {
    const s = Math.max(c[0], a);
    if (s >= b || c[0] + c[1] <= a) continue;
    if (s > pos) { await flush(); out.push(...holeRows(asm, pos, s, gaps)); }
    run.push(c);
    pos = Math.min(c[0] + c[1], b);
  }
  await flush();
  if (pos < b) out.push(...holeRows(asm, pos, b, gaps));
  return out;
}

// The rows for a hole [a, b): a line it cut short (ended by the hole), then one marker row. The lines of a
// dropped range wholly inside the hole are counted, so the lines after it keep their numbers.
export function holeRows(asm, a, b, gaps) {
  const rows = asm.partials().map((r) => ({ ...r, end: a, c: asm.line }));
  asm.pending.clear();
  const known = gaps.filter((g) => g.offset < b && g.offset + g.raw_size > a);
  for (const g of known) if (g.offset >= a && g.offset + g.raw_size <= b) asm.line += g.lines || 0;
  const why = known.map((g) => g.why).join(', ') || 'not in the archive';
  rows.push({ ...skippedRow({ from: a, to: b, bytes: b - a }, asm.line), text: `… ${fmtBytes(b - a)} ${why} …`, hole: true });
  return rows;
}

// The dropped range that holds byte `at`, if the meta lists one.
export function gapAt(gaps, at) {
  return gaps.find((g) => g.offset <= at && at < g.offset + g.raw_size);
}

// The chunks overlapping [a, b), their lines, and the assembler that goes on after them.
export async function readWindow(path, a, b, signal, gaps = []) {
  const idx = await fetchIndex(path, a, b, signal);
  const asm = new Assembler(idx.line ?? 0);
  let lo = a, hi = a, rows = [];
  if (idx.chunks.length) {
    const last = idx.chunks[idx.chunks.length - 1];
    lo = idx.chunks[0][0];
    hi = last[0] + last[1];
    rows = await readLines(path, idx.chunks, lo, hi, asm, signal, gaps);
  }
  return { idx, asm, lo, hi, rows };
}

// The ranges the log does not hold, as its meta lists them (`dropped`: offset, raw_size, lines, reason),
// adjacent ones merged (a quota drops whole segments, one entry each): one hole, one marker.
export function mergeGaps(dropped) {
  const gaps = [];
  for (const d of [...(dropped || [])].sort((x, y) => x.offset - y.offset)) {
    const last = gaps[gaps.length - 1], why = WHY[d.reason] || WHY.quota;
    if (last && last.offset + last.raw_size === d.offset) {
      last.raw_size += d.raw_size;
      last.lines += d.lines || 0;
      if (!last.why.includes(why)) last.why += `, ${why}`;
    } else gaps.push({ offset: d.offset, raw_size: d.raw_size, lines: d.lines || 0, why });
  }
  return gaps;
}

// --- the whole of a line a read holds only a part of ---------------------------------------------------

const PARTIAL = 1; // an index chunk's flag: it holds only the part of a line not ended yet (docs/format.md)
const WALK = 64; // index reads at most, walking one line's chunks one way
const BACK = 64; // records of one stream asked for by each read of a walk back (a line of up to 64 × 64 chunks)

// For each of `streams`, the bytes of the line it has open at offset `at` (a chunk's start) that lie before
// `at`: 0 when its next byte begins a line. A partial chunk holds only an unended line's part, so the line
// goes back through the run of the stream's partial chunks before `at` (the other stream's chunks between
// them, as when stderr lines were written while a stdout line was unended) to the stream's last chunk that ends
// a line, the log's start or a hole (which ends every line). The index, scanned back for one stream (`last`,
// api/indexback.py), finds it in one read however long the stream was silent, so the count is exact but for a
// line of more than WALK × BACK chunks, or past WALK × 100,000 records of the other stream. {bytes: stream ->
// bytes, low: the streams whose walk gave up (WALK reads): their count is a lower bound}.
export async function bytesBefore(path, at, streams, signal) {
  const bytes = {}, low = new Set();
  await Promise.all(streams.map(async (s) => {
    const { n, gaveUp } = await lineBefore(path, at, s, signal);
    bytes[s] = n;
    if (gaveUp) low.add(s);
  }));
  return { bytes, low };
}

async function lineBefore(path, at, stream, signal) {
  let n = 0;
  for (let step = 0; at > 0 && step < WALK; step++) {
    const idx = await apiJSON(`${path}/index?end=${at}&stream=${stream}&last=${BACK}`, { signal });
    for (let i = idx.chunks.length - 1; i >= 0; i--) {
      const [, len, , , flags] = idx.chunks[i];
      if (!(flags & PARTIAL)) return { n, gaveUp: false }; // it ends a line: the line begins after it
      n += len;
    }
    if (!idx.more) return { n, gaveUp: false }; // back to the log's start or a hole: the line begins there
    at = idx.from;
  }
  return { n, gaveUp: at > 0 };
}

// The bytes of `stream`'s line open at offset `at` (a chunk's end) that lie at or after it, up to `end`:
// through the stream's partial chunks to its next chunk, whose first newline ends the line; a hole or `end` ends
// it too. The index scanned forward for the stream (`stream=`, api/indexback.py) finds that chunk in one read
// however long the stream is silent. {n, low: the walk gave up (WALK reads): n is a lower bound}.
export async function bytesAfter(path, at, end, stream, signal) {
  let n = 0;
  for (let step = 0; at < end && step < WALK; step++) {
    const idx = await apiJSON(`${path}/index?start=${at}&end=${end}&stream=${stream}`, { signal });
    for (const [off, len, lines, , flags] of idx.chunks) {
      if (flags & PARTIAL || !lines) { n += len; continue; }
      if (lines === 1) return { n: n + len - 1, low: false }; // a chunk ends at a line end: its last byte
      return { n: n + (await fetchBytes(path, off, off + len, signal)).indexOf(10), low: false };
    }
    if (!idx.more) return { n, low: false }; // a hole, or open at `end` (the log's end as known): exact
    at = idx.to;
  }
  return { n, low: at < end };
}

// A read from `lo` (a chunk's start) into a new assembler `asm`: each stream's first line may have begun
// before lo. Its rows (and its unended line) get `before`, the bytes of it before lo; `known`: stream -> those
// bytes where the caller knows them already (no walk).
export async function measureBefore(path, lo, asm, rows, signal, known = {}) {
  const streams = [...asm.fed].filter((s) => (s === 'stdout' || s === 'stderr') && !(s in known));
  asm.before = { ...known };
  if (lo > 0 && streams.length) {
    const found = await bytesBefore(path, lo, streams, signal);
    Object.assign(asm.before, found.bytes);
    asm.low = found.low;
  }
  for (const r of rows) if (r.head) { r.before = asm.before[r.stream] || 0; r.low = asm.low.has(r.stream); }
}

// The first line of each stream a window's assembler (`asm`) had not fed before a read that goes on from its end
// (loadLater), in `rows` or still open: it may have begun before the bytes read, where the window held no byte
// of it or its rows were dropped. Its `before`, as measureBefore (its first byte read is a chunk's start).
export async function measureFresh(path, asm, fresh, rows, signal) {
  for (const s of fresh) {
    const p = asm.pending.get(s), first = rows.find((r) => r.head && r.stream === s) || (p && p.head ? p : null);
    if (!first || first.off <= 0) continue;
    const { bytes, low } = await bytesBefore(path, first.off, [s], signal);
    asm.before[s] = bytes[s];
    if (low.has(s)) asm.low.add(s); else asm.low.delete(s);
    for (const r of rows) if (r.head && r.stream === s) { r.before = bytes[s]; r.low = low.has(s); }
  }
}

// The lines of `streams` open at `hi` (a chunk's end), where the window ends before the log's `end`: how many
// bytes of each lie after hi ({bytes: stream -> bytes, low: the streams of a lower bound}). No request when no
// line is open there.
export async function measureAfter(path, hi, end, streams, signal) {
  const after = { bytes: {}, low: new Set() };
  if (hi < end) {
    for (const s of streams) {
      const { n, low } = await bytesAfter(path, hi, end, s, signal);
      after.bytes[s] = n;
      if (low) after.low.add(s);
    }
  }
  return after;
}

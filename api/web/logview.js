// The log view: one host's log as a window over its bytes, or every host of a task merged by time.
//
// The window [lo, hi) opens at the end (the last CHUNK bytes by Range), loads earlier chunks by Range
// as you scroll up and later ones as you scroll down, and keeps at most MAX_ROWS rows in the page,
// dropping the far end. The chunk index (GET …/index) gives each chunk's stream and time and the
// number of lines before it, so line numbers and stdout/stderr are exact wherever the window is. New
// bytes come from the live tail (WebSocket) while the window holds the end; the tail reconnects from
// its last offset, so nothing is shown twice or missed.
//
// Each navigation makes a new view object and closes the one before completely (Pane.close): its
// fetches are aborted, its tails and timers stopped, its listeners removed and its rows emptied, and it
// gets a scroll box of its own. Nothing the last view did or was still doing reaches the next one.

import { API, api, apiJSON, logPath } from './api.js';
import { $, el, fmtBytes, setText, showError } from './dom.js';
import { Assembler, countNewlines, rowElement, skippedRow } from './lines.js';
import { HostSilence, Liveness, endReason, resetLiveness } from './liveness.js';
import { Tail, showConn } from './tail.js';

const CHUNK = 256 * 1024; // bytes per Range read
export const MAX_ROWS = 5000; // line elements kept in the page
const TAIL_LINES = 200; // lines per host the all-hosts view starts with
// what a hole's marker says, by the `reason` of the manifest's `dropped` entry
const WHY = { quota: 'dropped at the spool quota', damaged: 'lost to a damaged spool file',
  missing: 'lost (missing from the spool)' };

// Following: the view is kept at the end. Where it was put is noted, so a view found above that spot
// was moved by the user (maybe an instant ago, its scroll event not yet handled): following stops
// then, before any new rows would pull the view back down.
function toEnd(view) {
  view.log.scrollTop = view.log.scrollHeight;
  view.autoTop = view.log.scrollTop;
}

function movedUp(view) {
  return view.autoTop != null && view.log.scrollTop < view.autoTop - 4;
}

// --- reading a log by Range ----------------------------------------------------------------------

const fetchIndex = (path, a, b, signal) => apiJSON(`${path}/index?start=${a}&end=${b}`, { signal });

async function fetchBytes(path, a, b, signal) {
  const r = await api(`${path}/log`, { headers: { Range: `bytes=${a}-${b - 1}` }, signal });
  return new Uint8Array(await r.arrayBuffer());
}

// The lines of `chunks` between offsets a and b, fed to `asm`. Bytes the log does not hold (dropped at the
// spool quota, lost to damage: no chunk covers them) are not asked for, since a Range across them is a
// 416 `bytes_missing`: each run of adjacent chunks is read by its own Range, and each hole between a and b
// shows as one marker row. `gaps` (the meta's `dropped`) names a hole's reason and adds its lines.
async function readLines(path, chunks, a, b, asm, signal, gaps = []) {
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
function holeRows(asm, a, b, gaps) {
  const rows = asm.partials().map((r) => ({ ...r, end: a, c: asm.line }));
  asm.pending.clear();
  const known = gaps.filter((g) => g.offset < b && g.offset + g.raw_size > a);
  for (const g of known) if (g.offset >= a && g.offset + g.raw_size <= b) asm.line += g.lines || 0;
  const why = known.map((g) => g.why).join(', ') || 'not in the archive';
  rows.push({ ...skippedRow({ from: a, to: b, bytes: b - a }, asm.line), text: `… ${fmtBytes(b - a)} ${why} …`, hole: true });
  return rows;
}

// The dropped range that holds byte `at`, if the meta lists one.
function gapAt(gaps, at) {
  return gaps.find((g) => g.offset <= at && at < g.offset + g.raw_size);
}

// The chunks overlapping [a, b), their lines, and the assembler that goes on after them.
async function readWindow(path, a, b, signal, gaps = []) {
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

// --- what every log view has: its own scroll box, the toolbar reset, a complete close -----------------

function edge(id) {
  const e = el('div', 'edge');
  e.id = id;
  e.hidden = true;
  return e;
}

class Pane {
  constructor() {
    this.ctl = new AbortController(); // aborts this view's fetches and removes its listeners
    this.signal = this.ctl.signal;
    this.closed = false;
    this.ready = false; // the first window is in place: scrolling may load more
    this.following = true;
    this.paused = false;
    this.tails = [];
    this.timers = new Set();
    // a scroll box of its own: the last view's rows, scroll position and pending scroll events stay with it
    this.log = el('div');
    this.log.id = 'log';
    this.log.tabIndex = 0;
    this.topEdge = edge('top-edge');
    this.rowsEl = el('div');
    this.rowsEl.id = 'rows';
    this.partialEl = el('div');
    this.partialEl.id = 'partial';
    this.bottomEdge = edge('bottom-edge');
    this.log.append(this.topEdge, this.rowsEl, this.partialEl, this.bottomEdge);
    $('#log').replaceWith(this.log);
    const on = (target, type, fn) => target.addEventListener(type, fn, { passive: true, signal: this.signal });
    on(this.log, 'scroll', () => { if (this.ready && !this.closed) this.onScroll(); });
    on(this.topEdge, 'click', () => this.loadEarlier && this.loadEarlier());
    on(this.bottomEdge, 'click', () => this.loadLater && this.loadLater());
    // the toolbar: nothing of the last view's state (the Pause, Follow and connection shown only while live)
    const badge = $('#log-status');
    badge.textContent = '';
    delete badge.dataset.status;
    delete badge.dataset.reason;
    const conn = $('#conn');
    conn.dataset.state = 'idle';
    conn.textContent = '';
    $('#pause').textContent = 'Pause';
    $('#pause').setAttribute('aria-pressed', 'false');
    $('#follow').setAttribute('aria-pressed', 'true');
    this.showLive(false);
    $('#host-filter').replaceChildren();
    $('#host-filter').hidden = true;
    resetLiveness();
    setText('#log-size', '');
    $('#new-lines').hidden = true;
  }

  close() {
    this.closed = true;
    this.ctl.abort();
    for (const t of this.tails) t.stop('closed');
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.rowsEl.replaceChildren();
    this.partialEl.replaceChildren();
    this.rows = [];
  }

  failed(e) {
    if (!this.closed) showError(e.message); // a closed view's aborted fetches are no one's concern
  }

  later(fn, ms) {
    const t = setTimeout(() => { this.timers.delete(t); if (!this.closed) fn(); }, ms);
    this.timers.add(t);
    return t;
  }

  cancel(t) {
    clearTimeout(t);
    this.timers.delete(t);
  }

  // Pause, Follow and the connection state are for a log still being written; a finished one has none.
  showLive(on) {
    $('#pause').hidden = $('#follow').hidden = $('#conn').hidden = !on;
  }

  setFollowing(on) {
    this.following = on;
    $('#follow').setAttribute('aria-pressed', String(on));
  }

  scrollBottom() {
    toEnd(this);
  }
}

export class LogView extends Pane {
  constructor(task, host, at) {
    super();
    this.task = task;
    this.host = host;
    this.path = logPath(task, host);
    this.at = at; // a byte offset to open at (a search hit), else the end
    this.rows = []; // {off, end, n, stream, ts, text, el}, in line order
    this.lo = this.hi = 0; // the window's bytes
    this.bottom = new Assembler(0); // lines at the window's end, continued by later bytes
    this.liveEnd = 0; // the offset after the last byte of the log known (from the meta, then the tail)
    this.attached = false; // the window ends where the log does: the tail's bytes are appended
    this.gen = 0; // bumped by each new window: answers for an older window are dropped
    this.loading = null;
    this.newLines = 0;
    this.pending = [];
    this.flushTimer = null;
  }

  async open() {
    const meta = await apiJSON(this.path, { signal: this.signal });
    if (this.closed) return;
    this.meta = meta;
    this.liveEnd = meta.live_size;
    if (this.at != null && this.at < meta.live_size) await this.loadAround(this.at);
    else await this.loadEnd();
    if (this.closed) return; // the user went elsewhere meanwhile
    this.ready = true;
    this.showMeta();
    this.live = new Liveness(this); // silent for how long, and the task's processes (liveness.js)
    this.live.start(meta);
    if (meta.status === 'running') {
      const tail = new Tail(this.task, this.host, { from: this.liveEnd }, {
        data: (off, bytes, stream, ts) => this.onData(off, bytes, stream, ts),
        skipped: (m) => this.onSkipped(m),
        end: (m) => this.onEnd(m),
        error: (m) => showError(`tail: ${m.detail}`),
        state: () => { if (!this.closed) showConn(this.tails); },
      });
      this.tails = [tail];
      this.showLive(true);
      if (!this.paused) tail.start();
    }
    this.checkEdges();
  }

  close() {
    this.gen++;
    super.close();
  }

  // The ranges the log does not hold, as its meta lists them (`dropped`: offset, raw_size, lines, reason),
  // adjacent ones merged (a quota drops whole segments, one entry each): one hole, one marker.
  gaps() {
    if (this.merged && this.merged.from === this.meta) return this.merged.gaps;
    const gaps = [];
    for (const d of [...((this.meta && this.meta.dropped) || [])].sort((x, y) => x.offset - y.offset)) {
      const last = gaps[gaps.length - 1], why = WHY[d.reason] || WHY.quota;
      if (last && last.offset + last.raw_size === d.offset) {
        last.raw_size += d.raw_size;
        last.lines += d.lines || 0;
        if (!last.why.includes(why)) last.why += `, ${why}`;
      } else gaps.push({ offset: d.offset, raw_size: d.raw_size, lines: d.lines || 0, why });
    }
    this.merged = { from: this.meta, gaps };
    return gaps;
  }

  // One badge: running, or how it ended (shown once the rows are there): "killed after 10 min of silence ·
  // exit 124" for a log the silence policy ended.
  showMeta() {
    const m = this.meta;
    const badge = $('#log-status');
    const reason = m.status === 'running' ? null : endReason(m);
    badge.textContent = (reason || m.status) + (m.exit_code != null ? ` · exit ${m.exit_code}` : '');
    if (reason) badge.dataset.reason = m.end_reason || 'silence'; else delete badge.dataset.reason;
    badge.dataset.status = m.status;
    setText('#log-size', fmtBytes(Math.max(m.live_size, this.liveEnd)));
  }

  // --- reading by Range --------------------------------------------------------------------------

  // A new window of the chunks overlapping [a, b); keep = which end to keep if it has too many lines.
  async loadWindow(a, b, keep) {
    const gen = ++this.gen;
    const { idx, asm, lo, hi, rows } = await readWindow(this.path, a, b, this.signal, this.gaps());
    if (gen !== this.gen || this.closed) return false;
    this.clear();
    this.lo = lo;
    this.hi = hi;
    this.firstLine = idx.line ?? 0;
    this.bottom = asm;
    // Attached only if the window reaches what the tail gave by now (it may have moved on meanwhile).
    this.attached = hi >= this.liveEnd || (!idx.chunks.length && hi >= idx.size);
    this.liveEnd = Math.max(this.liveEnd, hi);
    if (typeof keep === 'number' && rows.length > MAX_ROWS) { // the rows around offset `keep`
      const at = rows.findIndex((r) => r.end > keep);
      const from = Math.max(0, Math.min((at < 0 ? rows.length : at) - MAX_ROWS / 2, rows.length - MAX_ROWS));
      if (from > 0) {
        const gone = rows.splice(0, from);
        this.lo = gone[gone.length - 1].end;
        this.firstLine = gone[gone.length - 1].c;
      }
    }
    this.insert(rows, 'append', keep === 'end' ? { keep: 'end', drop: 'top' } : { keep: 'start', drop: 'bottom' });
    return true;
  }

  async loadEnd() {
    const end = this.liveEnd;
    if (await this.loadWindow(Math.max(0, end - CHUNK), end, 'end')) {
      this.setFollowing(true);
      this.showNewLines(0);
      this.scrollBottom();
      this.checkEdges();
    }
  }

  async loadAround(at) {
    if (await this.loadWindow(Math.max(0, at - CHUNK / 2), at + CHUNK / 2, at)) {
      this.setFollowing(false);
      const row = this.rows.find((r) => r.end > at) || this.rows[this.rows.length - 1];
      if (row) {
        row.el.classList.add('hit');
        row.el.scrollIntoView({ block: 'center' });
      }
      this.checkEdges();
    }
  }

  async loadStart() {
    if (await this.loadWindow(0, CHUNK, 'start')) {
      this.setFollowing(false);
      this.log.scrollTop = 0;
      this.checkEdges();
    }
  }

  // Earlier bytes, as the user scrolls up.
  loadEarlier() {
    if (!this.ready || this.closed || this.loading || this.lo <= 0) return;
    const gen = this.gen, lo = this.lo;
    this.loading = (async () => {
      const idx = await fetchIndex(this.path, Math.max(0, lo - CHUNK), lo, this.signal);
      if (gen !== this.gen || this.lo !== lo) return; // the window changed meanwhile
      if (!idx.chunks.length) { // nothing held before lo in a read's reach: a hole, or the log's start
        const g = gapAt(this.gaps(), lo - 1);
        const a = g ? g.offset : 0;
        if (a < lo) this.insert(holeRows(new Assembler(this.firstLine - (g?.lines || 0)), a, lo, this.gaps()), 'prepend', { keep: 'end', drop: 'bottom' });
        this.lo = a;
        this.firstLine -= g?.lines || 0;
        return;
      }
      const a = idx.chunks[0][0];
      const rows = await readLines(this.path, idx.chunks, a, lo, new Assembler(idx.line ?? 0), this.signal, this.gaps());
      if (gen !== this.gen || this.lo !== lo) return;
      this.lo = a;
      this.firstLine = idx.line ?? 0;
      this.insert(rows, 'prepend', { keep: 'end', limit: MAX_ROWS / 2, drop: 'bottom' });
    })();
    this.settle();
  }

  // Later bytes, as the user scrolls down a window that no longer holds the end.
  loadLater() {
    if (!this.ready || this.closed || this.loading || this.attached) return;
    const gen = this.gen, hi = this.hi, asm = this.bottom; // the lines go on from this window's end
    this.loading = (async () => {
      const idx = await fetchIndex(this.path, hi, Math.max(hi + 1, Math.min(hi + CHUNK, this.liveEnd)), this.signal);
      if (gen !== this.gen || this.hi !== hi || this.bottom !== asm) return; // the window changed meanwhile
      let rows = [], end = hi;
      if (idx.chunks.length) {
        const last = idx.chunks[idx.chunks.length - 1];
        end = last[0] + last[1];
        rows = await readLines(this.path, idx.chunks, hi, end, asm, this.signal, this.gaps());
        if (gen !== this.gen || this.hi !== hi || this.bottom !== asm) return;
      } else if (gapAt(this.gaps(), hi)) { // a hole longer than a read: past it in one step
        const g = gapAt(this.gaps(), hi);
        end = g.offset + g.raw_size;
        rows = holeRows(asm, hi, end, this.gaps());
      }
      this.hi = end;
      // Attached only if the window reaches what the tail gave by now; else the next read goes on.
      this.attached = end >= this.liveEnd || (!idx.chunks.length && end >= idx.size);
      this.liveEnd = Math.max(this.liveEnd, end);
      this.insert(rows, 'append', { keep: 'start', limit: MAX_ROWS / 2, drop: 'top' });
      if (this.attached) this.showNewLines(0);
      if (this.following) this.scrollBottom();
    })();
    this.settle();
  }

  settle() {
    this.loading.catch((e) => this.failed(e)).finally(() => {
      this.loading = null;
      this.checkEdges();
    });
  }

  checkEdges() {
    if (!this.ready || this.closed) return;
    this.showEdges();
    if (this.loading) return;
    const margin = this.log.clientHeight;
    if (this.log.scrollTop < margin && this.lo > 0 && !this.following) this.loadEarlier();
    else if (this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < margin && !this.attached) {
      this.loadLater();
    }
  }

  showEdges() {
    const top = this.topEdge, bottom = this.bottomEdge;
    top.textContent = this.lo > 0 ? `⇡ ${fmtBytes(this.lo)} before — scroll up or press Home for the first line` : '';
    top.hidden = this.lo <= 0;
    bottom.textContent = this.attached ? '' : `⇣ ${fmtBytes(this.liveEnd - this.hi)} after — scroll down or press End`;
    bottom.hidden = this.attached;
  }

  // --- the rows in the page ----------------------------------------------------------------------

  clear() {
    this.pending = []; // queued tail rows belong to the old window
    this.rows = [];
    this.rowsEl.replaceChildren();
    this.partialEl.replaceChildren();
    this.showNewLines(0);
  }

  // Add a batch of rows at one end, keeping at most MAX_ROWS in the page. A batch over `limit` keeps its
  // `keep` end (the one next to the rows shown, or the newest); older rows go from the `drop` end
  // ('none': the batch is cut to the room left).
  insert(rows, where, { keep, limit = MAX_ROWS, drop }) {
    if (drop === 'none') limit = Math.min(limit, MAX_ROWS - this.rows.length);
    if (rows.length > limit) { // leave out what would be dropped at once, before making elements
      if (keep === 'end') {
        if (where === 'append') this.dropTop(this.rows.length); // all of them are older than the batch
        const gone = rows.splice(0, rows.length - limit);
        this.lo = gone[gone.length - 1].end;
        this.firstLine = gone[gone.length - 1].c;
      } else {
        if (where === 'prepend') this.dropBottom(this.rows.length);
        rows.splice(limit);
        this.cutBottomAt(rows[rows.length - 1] || this.rows[this.rows.length - 1]);
      }
    }
    const frag = document.createDocumentFragment();
    for (const r of rows) { r.el = rowElement(r); frag.append(r.el); }
    if (where === 'prepend') {
      const before = this.log.scrollHeight;
      this.rowsEl.prepend(frag);
      this.rows = rows.concat(this.rows);
      this.log.scrollTop += this.log.scrollHeight - before;
    } else {
      this.rowsEl.append(frag);
      this.rows = this.rows.concat(rows);
    }
    const extra = this.rows.length - MAX_ROWS;
    if (extra > 0 && drop === 'top') this.dropTop(extra);
    else if (extra > 0) this.dropBottom(extra);
    this.renderPartials();
    this.showEdges();
  }

  dropTop(n) {
    if (n <= 0) return;
    const keepFirst = this.rows[n];
    // while following, the view goes to the end anyway: no layout to read (it is costly at 5,000 rows)
    const shift = keepFirst && !this.following ? keepFirst.el.offsetTop - this.rows[0].el.offsetTop : 0;
    const gone = this.rows.splice(0, n);
    for (const r of gone) r.el.remove();
    const last = gone[gone.length - 1];
    this.lo = last.end;
    this.firstLine = last.c;
    if (!this.following) this.log.scrollTop -= shift;
  }

  dropBottom(n) {
    if (n <= 0) return;
    const gone = this.rows.splice(this.rows.length - n, n);
    for (const r of gone) r.el.remove();
    this.cutBottomAt(this.rows[this.rows.length - 1]);
  }

  // The window now ends after `row`: later bytes come again by Range when scrolled to.
  cutBottomAt(row) {
    this.hi = row ? row.end : this.lo;
    this.bottom = new Assembler(row ? row.c : this.firstLine);
    this.attached = false;
    this.pending = []; // queued tail rows lie after the cut: they come again by Range
    this.partialEl.replaceChildren();
  }

  renderPartials() {
    this.partialEl.replaceChildren(...this.bottom.partials().map((r) => rowElement(r)));
  }

  // --- the tail ----------------------------------------------------------------------------------

  onData(off, bytes, stream, ts) {
    const end = off + bytes.length;
    if (this.attached && off > this.hi) { // a hole (never expected): read it by Range
      this.attached = false;
      this.checkEdges();
    }
    if (this.attached && end > this.hi) {
      if (off < this.hi) { bytes = bytes.subarray(this.hi - off); off = this.hi; }
      const rows = [];
      this.bottom.feed(off, bytes, stream, ts, rows);
      this.hi = end;
      this.queue(rows);
    } else if (!this.attached) {
      this.showNewLines(this.newLines + countNewlines(bytes));
    }
    this.liveEnd = Math.max(this.liveEnd, end);
    setText('#log-size', fmtBytes(this.liveEnd));
    if (this.live) this.live.sawOutput();
  }

  onSkipped(m) {
    if (this.attached) {
      this.hi = m.to;
      this.queue([skippedRow(m, this.bottom.line)]);
    }
    this.liveEnd = Math.max(this.liveEnd, m.to);
  }

  onEnd(m) {
    this.flush(); // the last rows first, then the badge that says it ended
    this.meta = { ...this.meta, status: m.status, exit_code: m.exit_code };
    this.showMeta();
    this.showLive(false);
    if (!this.live) return;
    this.live.ended().then((meta) => { // why it ended (end_reason) and its last sample
      if (!meta || this.closed) return;
      this.meta = { ...this.meta, end_reason: meta.end_reason, liveness: meta.liveness };
      this.showMeta();
    }).catch((e) => this.failed(e));
  }

  // Rows from the tail are added once a frame (16 ms), in one go: a line shows well within 50 ms.
  queue(rows) {
    this.pending.push(...rows);
    if (!this.flushTimer) this.flushTimer = this.later(() => this.flush(), 16);
  }

  flush() {
    if (this.closed) return;
    if (this.following && movedUp(this)) this.setFollowing(false);
    this.cancel(this.flushTimer);
    this.flushTimer = null;
    const rows = this.pending;
    this.pending = [];
    // Over MAX_ROWS, rows go from the end farther from what is in view: reading near the end, the oldest
    // go; reading further up, new rows wait below (the window leaves the end and counts them).
    const log = this.log, nearEnd = log.scrollTop + log.clientHeight / 2 > log.scrollHeight / 2;
    this.insert(rows, 'append', this.following ? { keep: 'end', drop: 'top' }
      : { keep: 'start', drop: nearEnd ? 'top' : 'none' });
    if (!this.attached) this.showNewLines(this.newLines);
    if (this.following) this.scrollBottom();
  }

  showNewLines(n) {
    this.newLines = n;
    const b = $('#new-lines');
    b.hidden = n === 0 && (this.attached || !this.rows.length);
    b.textContent = n ? `↓ ${n} new line${n === 1 ? '' : 's'}` : '↓ the end';
  }

  // --- user actions ------------------------------------------------------------------------------

  onScroll() {
    const atBottom = this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 4;
    if (!atBottom && this.following) this.setFollowing(false);
    else if (atBottom && this.attached && !this.following) this.setFollowing(true);
    if (this.following) this.showNewLines(0);
    this.checkEdges();
  }

  jumpTop() {
    if (this.lo === 0) { this.setFollowing(false); this.log.scrollTop = 0; this.checkEdges(); return; }
    this.loadStart().catch((e) => this.failed(e));
  }

  jumpBottom() {
    this.showNewLines(0);
    if (this.attached) { this.setFollowing(true); this.scrollBottom(); return; }
    this.loadEnd().catch((e) => this.failed(e));
  }

  pause(on) {
    this.paused = on;
    for (const t of this.tails) if (on) t.stop('paused'); else t.start();
    if (on) this.flush();
  }

  downloads() {
    const base = API + `${this.path}/log`;
    const name = `${this.task}.${this.host}`;
    return [[base, `${name}.log`], [`${base}?stream=stdout`, `${name}.stdout.log`],
      [`${base}?stream=stderr`, `${name}.stderr.log`]];
  }
}

export class MultiView extends Pane {
  constructor(task) {
    super();
    this.task = task;
    this.rows = [];
    this.hidden = new Set();
    this.attached = true;
    this.log.classList.add('multi');
  }

  // Each host's last lines by Range (numbered as in its own log), then its live tail if it runs.
  async open() {
    const list = await apiJSON(`tasks?task=${encodeURIComponent(this.task)}&limit=1000`, { signal: this.signal });
    if (this.closed) return;
    if (!list.logs.length) throw new Error(`no logs of task ${this.task}`);
    this.hosts = [...new Set(list.logs.map((l) => l.host))].sort();
    this.showHosts();
    const metas = await Promise.all(this.hosts.map((host) => this.openHost(host).catch((e) => {
      if (!this.closed) showError(`${host}: ${e.message}`); // one host's trouble leaves the others shown
      return null;
    })));
    if (this.closed) return;
    this.metas = new Map(this.hosts.map((h, i) => [h, metas[i]]).filter(([, m]) => m));
    this.ready = true;
    this.showMeta();
    this.silence = new HostSilence(this); // a mark beside each silent host (liveness.js)
    this.silence.start(this.metas);
    const running = this.tails.filter((t) => !t.ended);
    this.showLive(running.length > 0);
    if (!this.paused) for (const t of running) t.start();
    if (running.length) showConn(this.tails);
  }

  async openHost(host) {
    const path = logPath(this.task, host);
    const meta = await apiJSON(path, { signal: this.signal });
    const end = meta.live_size;
    const { asm, hi, rows } = await readWindow(path, Math.max(0, end - CHUNK), end, this.signal);
    if (this.closed) return meta;
    this.add(rows.slice(-TAIL_LINES).map((r) => ({ ...r, host })));
    if (meta.status !== 'running') return meta;
    const tail = new Tail(this.task, host, { from: Math.max(hi, end) }, {
      data: (off, bytes, stream, ts) => {
        const out = [];
        asm.feed(off, bytes, stream, ts, out);
        for (const r of out) r.host = host;
        this.add(out);
        if (this.silence) this.silence.heard(host);
      },
      skipped: (m) => this.add([{ ...skippedRow(m), host, ts: Date.now() * 1e6 }]),
      end: (m) => this.onEnd(host, m),
      error: (m) => showError(`${host}: ${m.detail}`),
      state: () => { if (!this.closed) showConn(this.tails); },
    });
    this.tails.push(tail);
    return meta;
  }

  showHosts() {
    const filter = $('#host-filter');
    filter.hidden = false;
    filter.replaceChildren(...this.hosts.map((h) => {
      const item = el('span', 'host');
      item.dataset.host = h;
      const box = el('input');
      box.type = 'checkbox';
      box.checked = true;
      box.title = `show ${h}'s lines`;
      box.setAttribute('aria-label', `show ${h}`);
      box.addEventListener('change', () => this.filterHost(h, box.checked), { signal: this.signal });
      const a = el('a', null, h);
      a.href = `#/t/${encodeURIComponent(this.task)}/${encodeURIComponent(h)}`;
      a.title = `${h}'s log alone`;
      item.append(box, a);
      return item;
    }));
  }

  // One badge for the task: how many hosts, how many still run, else how they ended.
  showMeta() {
    const metas = [...this.metas.values()];
    const running = metas.filter((m) => m.status === 'running').length;
    const exits = [...new Set(metas.filter((m) => m.exit_code != null).map((m) => m.exit_code))];
    const badge = $('#log-status');
    badge.textContent = `${metas.length} host${metas.length === 1 ? '' : 's'}`
      + (running ? `, ${running} running` : ` · finished${exits.length ? ` · exit ${exits.join(', ')}` : ''}`);
    badge.dataset.status = running ? 'running' : 'finished';
    setText('#log-size', fmtBytes(metas.reduce((n, m) => n + (m.live_size || 0), 0)));
  }

  onEnd(host, m) {
    if (this.silence) this.silence.ended(host);
    this.metas.set(host, { ...this.metas.get(host), status: m.status, exit_code: m.exit_code });
    this.showMeta();
    if (this.tails.every((t) => t.ended)) this.showLive(false);
  }

  // Insert by time: a host's lines fall between the others' lines.
  add(rows) {
    if (this.closed) return;
    if (this.following && movedUp(this)) this.setFollowing(false);
    for (const r of rows) {
      r.el = rowElement(r, r.host);
      if (this.hidden.has(r.host)) r.el.hidden = true;
      let lo = 0, hi = this.rows.length;
      while (lo < hi) { const mid = (lo + hi) >> 1; if (this.rows[mid].ts <= r.ts) lo = mid + 1; else hi = mid; }
      if (lo === this.rows.length) this.rowsEl.append(r.el);
      else this.rowsEl.insertBefore(r.el, this.rows[lo].el);
      this.rows.splice(lo, 0, r);
    }
    if (this.rows.length > MAX_ROWS) for (const r of this.rows.splice(0, this.rows.length - MAX_ROWS)) r.el.remove();
    if (this.following) toEnd(this);
  }

  filterHost(host, show) {
    this.hidden[show ? 'delete' : 'add'](host);
    for (const r of this.rows) if (r.host === host) r.el.hidden = !show;
  }

  onScroll() {
    const atBottom = this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 4;
    if (atBottom !== this.following) this.setFollowing(atBottom);
  }

  jumpTop() { this.setFollowing(false); this.log.scrollTop = 0; }
  jumpBottom() { this.setFollowing(true); toEnd(this); }
  pause(on) { this.paused = on; for (const t of this.tails) if (on) t.stop('paused'); else t.start(); }
  downloads() { return [[API + `tasks/${encodeURIComponent(this.task)}/log`, `${this.task}.all-hosts.log`]]; }
}

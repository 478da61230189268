// The log view: one host's log as a window over its bytes (rowwindow.js keeps its rows in the page).
//
// The window [lo, hi) opens at the end (the last CHUNK bytes by Range), loads earlier chunks by Range
// as you scroll up and later ones as you scroll down, and keeps at most MAX_ROWS rows in the page,
// dropping the far end. The chunk index (GET …/index) gives each chunk's stream and time and the
// number of lines before it, so line numbers and stdout/stderr are exact wherever the window is. New
// bytes come from the live tail (WebSocket) while the window holds the end; the tail reconnects from
// its last offset, so nothing is shown twice or missed.

import { API, apiJSON, logPath } from './api.js';
import { $, fmtBytes, setText, showError } from './dom.js';
import { Assembler, countNewlines, skippedRow } from './lines.js';
import { Liveness, endReason } from './liveness.js';
import { MAX_ROWS, movedUp, stopScroll } from './pane.js';
import { CHUNK, fetchIndex, gapAt, holeRows, measureAfter, measureBefore, measureFresh, mergeGaps, readLines, readWindow }
  from './range.js';
import { RowWindow } from './rowwindow.js';
import { Tail, showConn } from './tail.js';

// reads at most that fill a view by themselves (checkEdges): 2 MiB or more (a read takes whole chunks, up to
// 1 MiB), a screen of lines up to 50 KB long; a log that ends in a longer line is not read back to its start unasked
const FILL_READS = 8;

export class LogView extends RowWindow {
  constructor(task, host, at) {
    super();
    this.task = task;
    this.host = host;
    this.path = logPath(task, host);
    this.at = at; // a byte offset to open at (a search hit), else the end
    this.gen = 0; // bumped by each new window: answers for an older window are dropped
    this.loading = null;
    this.flushTimer = null;
    this.fills = 0; // reads that filled the view by themselves (checkEdges), since the window was made
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

  // The ranges the log does not hold (the meta's `dropped`, merged), worked out once per meta.
  gaps() {
    if (this.merged && this.merged.from === this.meta) return this.merged.gaps;
    this.merged = { from: this.meta, gaps: mergeGaps(this.meta && this.meta.dropped) };
    return this.merged.gaps;
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
    // the rest of a line longer than the window: before it, and after it
    await measureBefore(this.path, lo, asm, rows, this.signal);
    const after = await measureAfter(this.path, hi, Math.max(this.liveEnd, hi), asm.pending.keys(), this.signal);
    if (gen !== this.gen || this.closed) return false;
    this.clear();
    this.fills = 0;
    this.after = after;
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
      this.showNewLines(0);
      this.jumpTo('end');
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
      this.jumpTo(0);
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
      const a = idx.chunks[0][0], asm = new Assembler(idx.line ?? 0);
      const rows = await readLines(this.path, idx.chunks, a, lo, asm, this.signal, this.gaps());
      await measureBefore(this.path, a, asm, rows, this.signal, this.knownBefore(asm)); // a line begun before a
      // a line open at lo with no byte in the window goes on past its end: how much lies after that
      const across = this.attached ? [] : [...asm.pending.keys()].filter((s) => !this.holds(s));
      const after = await measureAfter(this.path, this.hi, Math.max(this.liveEnd, this.hi), across, this.signal);
      if (gen !== this.gen || this.lo !== lo) return;
      this.joinEarlier(asm, rows, after); // the lines open at lo go on in the rows here
      this.knownStart(asm, a === 0); // the others begin at lo or later
      this.lo = a;
      this.firstLine = idx.line ?? 0;
      this.insert(rows, 'prepend', { keep: 'end', limit: MAX_ROWS / 2, drop: 'bottom' });
      if (this.following) this.scrollBottom(); // a view filled from above while it follows stays at the end
      else if (this.upBy) this.log.scrollTop -= this.upBy; // up at the top (upAtTop): the view moves up into them
      this.upBy = 0;
    })();
    this.settle();
  }

  // Up at the top of the view (pane.js): the user asks for earlier rows. Following ends, they are read, and the
  // view moves up by `dy` once they are in, as the wheel or key would have moved it had they been there.
  upAtTop(dy) {
    if (this.lo <= 0) return;
    this.setFollowing(false);
    this.fills = 0;
    this.upBy = dy; // for the read under way (a view being filled), or this one
    this.loadEarlier();
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
        const fresh = ['stdout', 'stderr'].filter((s) => !asm.fed.has(s));
        rows = await readLines(this.path, idx.chunks, hi, end, asm, this.signal, this.gaps());
        await measureFresh(this.path, asm, fresh, rows, this.signal); // a line begun before the window's end
        const after = await measureAfter(this.path, end, Math.max(this.liveEnd, end), asm.pending.keys(), this.signal);
        if (gen !== this.gen || this.hi !== hi || this.bottom !== asm) return;
        this.after = after;
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
    // a read that failed stops the filling of a view its rows do not fill (checkEdges) until one succeeds
    this.loading.then(() => { this.erred = false; }, (e) => { this.erred = true; this.failed(e); }).finally(() => {
      this.loading = null;
      this.checkEdges();
    });
  }

  checkEdges() {
    if (!this.ready || this.closed) return;
    this.showEdges();
    if (this.loading) return;
    const margin = this.log.clientHeight;
    // rows that do not fill the view (a few long lines at the log's end, a tall window) leave nothing to scroll:
    // earlier ones are read, following or not, until they fill it; bounded (rows hidden by a toggle fill nothing,
    // nor do the parts of one enormous line): up at the top (upAtTop) goes on from there
    const near = this.log.scrollTop < margin && !this.following;
    const unfilled = this.log.scrollHeight <= margin && this.rows.length < MAX_ROWS / 2 && !this.erred
      && this.fills < FILL_READS;
    if (this.lo > 0 && (near || unfilled)) {
      if (!near) this.fills++;
      this.loadEarlier();
    } else if (this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < margin && !this.attached) {
      this.loadLater();
    }
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


  // --- user actions ------------------------------------------------------------------------------

  onScroll() {
    const atBottom = this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 4;
    if (!atBottom && this.following) this.setFollowing(false);
    else if (atBottom && this.attached && !this.following) this.setFollowing(true);
    if (this.following) this.showNewLines(0);
    this.checkEdges();
  }

  // Home, End: a smooth scroll under way stops at once (pane.js stopScroll), not after the read
  jumpTop() {
    if (this.lo === 0) { this.jumpTo(0); this.checkEdges(); return; }
    stopScroll(this.log);
    this.loadStart().catch((e) => this.failed(e));
  }

  jumpBottom() {
    this.showNewLines(0);
    if (this.attached) { this.jumpTo('end'); return; }
    stopScroll(this.log);
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


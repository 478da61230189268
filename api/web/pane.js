// What every log view has (one host's log, logview.js; every host's, multiview.js): a scroll box of its own,
// the toolbar reset to nothing of the last view, following the end, and a complete close.
//
// Each navigation makes a new view object and closes the one before completely (Pane.close): its
// fetches are aborted, its tails and timers stopped, its listeners removed and its rows emptied, and it
// gets a scroll box of its own. Nothing the last view did or was still doing reaches the next one.

import { $, el, setText, showError, typing } from './dom.js';
import { resetLiveness } from './liveness.js';

export const MAX_ROWS = 5000; // line elements kept in the page
const SCROLL_KEYS = new Set(['PageUp', 'PageDown', 'ArrowUp', 'ArrowDown']); // the log's, wherever the focus


// Following: the view is kept at the end. Where it was put is noted, so a view found above that spot
// was moved by the user (maybe an instant ago, its scroll event not yet handled): following stops
// then, before any new rows would pull the view back down.
export function toEnd(view) {
  view.log.scrollTop = view.log.scrollHeight;
  view.autoTop = view.log.scrollTop;
}

export function movedUp(view) {
  return view.autoTop != null && view.log.scrollTop < view.autoTop - 4;
}

// Chromium carries a smooth scroll begun by a key (an arrow, PageUp, PageDown) on after scrollTop is set, by what
// is left of it from wherever the view was put: a jump made while it runs lands off target. A smooth scroll by 0
// takes its place (the view stops where it is), and the next scroll ends that one (CSSOM View: a scroll aborts a
// smooth scroll under way). tests/test_web_jump.py presses the keys back to back.
export function stopScroll(log) {
  log.scrollBy({ top: 0, behavior: 'smooth' });
}

function edge(id) {
  const e = el('div', 'edge');
  e.id = id;
  e.hidden = true;
  return e;
}

export class Pane {
  constructor() {
    this.ctl = new AbortController(); // aborts this view's fetches and removes its listeners
    this.signal = this.ctl.signal;
    this.closed = false;
    this.ready = false; // the first window is in place: scrolling may load more
    this.following = true;
    this.paused = false;
    this.tails = [];
    this.timers = new Set();
    this.moves = 0; // the user's doings that may move the view (a key, the wheel, a touch, a click): see jumpTo
    this.jumps = 0;
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
    // Up at the top (a wheel, a swipe down, PageUp or ArrowUp) scrolls nothing, so no scroll event comes: in a
    // view its rows do not fill, it is the only way up. The view is told (logview.js upAtTop), with how far.
    const up = (dy) => { if (this.ready && !this.closed && this.upAtTop && this.log.scrollTop <= 0) this.upAtTop(dy); };
    on(this.log, 'wheel', (e) => { this.moves++; if (e.deltaY < 0) up(e.deltaMode ? this.log.clientHeight / 2 : -e.deltaY); });
    on(this.log, 'touchstart', (e) => { this.touchY = e.touches[0].clientY; this.moves++; });
    on(document, 'mousedown', () => { this.moves++; }); // the scrollbar, or a toolbar button (Follow off)
    on(this.log, 'touchmove', (e) => {
      const y = e.touches[0].clientY;
      if (this.touchY != null && y > this.touchY + 8) { up(y - this.touchY); this.touchY = y; }
    });
    on(window, 'resize', () => { if (this.ready && !this.closed && this.checkEdges) this.checkEdges(); }); // taller
    on(document, 'keydown', (e) => {
      if (typing(e)) return;
      if (e.key !== 'Home' && e.key !== 'End') this.moves++; // those two jump (app.js)
      if (!SCROLL_KEYS.has(e.key)) return;
      // from the toolbar (a box or button just clicked keeps the focus) the browser would scroll nothing: the log
      // takes the focus first, and the browser's own scrolling, after this listener, moves it
      if (!this.log.contains(e.target)) this.log.focus({ preventScroll: true });
      if (e.key === 'PageUp' || e.key === 'ArrowUp') up(e.key === 'PageUp' ? this.log.clientHeight * 0.9 : 40);
    });
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

  // A jump (Home, End; the toolbar's Top, Bottom, Follow; "↓ new lines"): the view put at the top (0, not following) or at the end
  // ('end', following), any smooth scroll under way stopped first (stopScroll). For the frames such a scroll
  // could still run, the view is put back should anything carry it off, unless the user moved it since or
  // jumped again.
  jumpTo(to) {
    const put = () => {
      this.setFollowing(to === 'end');
      if (to === 'end') toEnd(this); else this.log.scrollTop = to;
    };
    stopScroll(this.log);
    put();
    if (!this.ready) return; // the first window (open): no key has scrolled a new view's box
    const moves = this.moves, jump = ++this.jumps, until = performance.now() + 500;
    const check = () => {
      if (this.closed || this.moves !== moves || this.jumps !== jump || performance.now() > until) return;
      const log = this.log;
      if (to === 'end' ? log.scrollHeight - log.scrollTop - log.clientHeight >= 4 : log.scrollTop !== to) put();
      requestAnimationFrame(check);
    };
    requestAnimationFrame(check);
  }
}

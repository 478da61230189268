// The rows of one host's log in the page: the window [lo, hi) of its bytes as line rows, at most MAX_ROWS,
// rows added at either end and the far end dropped; the lines still open at the window's end (its
// assembler, `bottom`) shown below the rows; the edges saying how much lies before and after.

import { $, fmtBytes } from './dom.js';
import { Assembler, prependPart, rowElement } from './lines.js';
import { MAX_ROWS, Pane } from './pane.js';

export class RowWindow extends Pane {
  constructor() {
    super();
    this.rows = []; // {off, end, n, stream, ts, text, el}, in line order
    this.lo = this.hi = 0; // the window's bytes
    this.bottom = new Assembler(0); // lines at the window's end, continued by later bytes
    this.liveEnd = 0; // the offset after the last byte of the log known (from the meta, then the tail)
    this.attached = false; // the window ends where the log does: the tail's bytes are appended
    this.newLines = 0;
    this.pending = [];
    // bytes after hi of the line each stream has open there, while not attached (range.js measureAfter)
    this.after = { bytes: {}, low: new Set() };
  }

  showEdges() {
    const top = this.topEdge, bottom = this.bottomEdge;
    top.textContent = this.lo > 0 ? `⇡ ${fmtBytes(this.lo)} before — scroll up or press Home for the first line` : '';
    top.hidden = this.lo <= 0;
    bottom.textContent = this.attached ? '' : `⇣ ${fmtBytes(this.liveEnd - this.hi)} after — scroll down or press End`;
    bottom.hidden = this.attached;
  }

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

  // The lines still open at the window's end; one the window's end cuts (not the log's) says how much of it
  // lies after (`after`, range.js measureAfter).
  renderPartials() {
    const cut = (r) => (this.attached ? {} : { after: this.after.bytes[r.stream] || 0,
      lowAfter: this.after.low.has(r.stream) });
    this.partialEl.replaceChildren(...this.bottom.partials().map((r) => rowElement({ ...r, ...cut(r) })));
  }

  // Whether the window holds a byte of `stream`'s line open at its start (or a hole row, which would end it).
  holds(stream) {
    return this.bottom.pending.has(stream) || this.rows.some((r) => r.stream === stream || r.stream === 'skip');
  }

  // The row (or the line open at the window's end) that `stream`'s line open at the window's start goes on in:
  // its stream's first; none if a hole row comes first.
  joinTarget(stream) {
    const row = this.rows.find((r) => r.stream === stream || r.stream === 'skip');
    if (row) return row.stream === 'skip' ? null : row;
    const open = this.bottom.pending.get(stream);
    return open && { off: open.off, before: open.head ? this.bottom.before[stream] || 0 : 0,
      low: open.head && this.bottom.low.has(stream) };
  }

  // For an earlier read (`asm`, fed up to the window's start) whose lines open there join the rows here: the
  // bytes before its part of each, known without a walk back from the row's own count (a long line scrolled
  // through read by read costs one walk, not one a read): stream -> bytes. Only for a line begun before the
  // read (else it is 0 for the walk's first step) and an exact count.
  knownBefore(asm) {
    const known = {};
    for (const [stream, p] of asm.pending) {
      const to = p.head && this.joinTarget(stream), part = to && !to.low && asm.partBefore(stream, to.off);
      const n = part ? part.parts.reduce((k, x) => k + x.length, 0) : 0;
      if (part && to.before >= n) known[stream] = to.before - n;
    }
    return known;
  }

  // An earlier read (`asm`, fed up to the window's start) that ends inside lines the window goes on with, and
  // its rows (`batch`, to go above): each such line's bytes before the window join the line's row here (its
  // stream's first row, or its line open at the window's end), which shows the line from its start and counts
  // what lies before that. No byte twice: a row that began before the window's start takes only the bytes
  // before its own. A line with no byte here goes on past the window's end: it is the one open there, with
  // `after` (range.js measureAfter) bytes after it. A line a hole row cuts is left as it was.
  joinEarlier(asm, batch, after) {
    for (const stream of asm.pending.keys()) {
      const i = this.rows.findIndex((r) => r.stream === stream || r.stream === 'skip');
      const row = this.rows[i], open = this.bottom.pending.get(stream);
      if (row && row.stream === 'skip') continue;
      const part = asm.partBefore(stream, row ? row.off : open ? open.off : Infinity);
      if (!part) continue;
      if (row) this.replaceRow(i, prependPart(row, part));
      else { // the line goes on past the window's end
        const { off, parts, offs, ts, head } = part;
        if (open) Object.assign(open, { off, parts: [...parts, ...open.parts], offs: [...offs, ...open.offs], ts, head });
        else {
          this.bottom.pending.set(stream, { off, parts, offs, ts, head });
          this.bottom.fed.add(stream);
          this.after.bytes[stream] = after.bytes[stream] || 0;
          if (after.low.has(stream)) this.after.low.add(stream); else this.after.low.delete(stream);
        }
        this.bottom.before[stream] = part.before;
        if (part.low) this.bottom.low.add(stream); else this.bottom.low.delete(stream);
      }
    }
    // a row's bytes are kept while an earlier line may join it: only while it is its stream's first
    for (const stream of new Set(batch.map((r) => r.stream))) {
      const first = this.rows.find((r) => r.stream === stream);
      if (first) delete first.raw;
    }
  }

  replaceRow(i, row) {
    row.el = rowElement(row);
    if (this.rows[i].el.classList.contains('hit')) row.el.classList.add('hit'); // a search hit stays marked
    this.rows[i].el.replaceWith(row.el);
    this.rows[i] = row;
  }

  // An earlier read (`asm`, fed up to the window's start; `atStart`: from the log's first byte) with no line of a
  // stream open at its end: that stream's line open at the window's start begins there or later, if the read
  // fed the stream or begins the log. A walk back that gave up finding none of it (`low`, no `before`) left the
  // line "may have begun before": now known not to have.
  knownStart(asm, atStart) {
    for (const stream of ['stdout', 'stderr']) {
      if (asm.pending.has(stream) || !(atStart || asm.fed.has(stream))) continue;
      const i = this.rows.findIndex((r) => r.stream === stream || r.stream === 'skip');
      const row = this.rows[i];
      if (row && row.stream === stream && row.low && !row.before) this.replaceRow(i, { ...row, low: false });
      else if (!row && !this.bottom.before[stream]) this.bottom.low.delete(stream);
    }
  }

  showNewLines(n) {
    this.newLines = n;
    const b = $('#new-lines');
    b.hidden = n === 0 && (this.attached || !this.rows.length);
    b.textContent = n ? `↓ ${n} new line${n === 1 ? '' : 's'}` : '↓ the end';
  }
}

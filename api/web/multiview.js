// The all-hosts view: every host of a task, each host's last lines by Range, merged by time, then their
// live tails inserted by time as they come.

import { API, apiJSON, logPath } from './api.js';
import { $, el, fmtBytes, setText, showError } from './dom.js';
import { rowElement, skippedRow } from './lines.js';
import { HostSilence } from './liveness.js';
import { MAX_ROWS, Pane, movedUp, toEnd } from './pane.js';
import { CHUNK, readWindow } from './range.js';
import { Tail, showConn } from './tail.js';

const TAIL_LINES = 200; // lines per host the all-hosts view starts with

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

  jumpTop() { this.jumpTo(0); }
  jumpBottom() { this.jumpTo('end'); }
  pause(on) { this.paused = on; for (const t of this.tails) if (on) t.stop('paused'); else t.start(); }
  downloads() { return [[API + `tasks/${encodeURIComponent(this.task)}/log`, `${this.task}.all-hosts.log`]]; }
}

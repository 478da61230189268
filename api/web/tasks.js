// The task list: every log, newest first, with filters; it refreshes itself.

import { apiJSON, logPath } from './api.js';
import { $, clearError, el, fmtBytes, fmtDuration, fmtTime, setText, showError, timeEl } from './dom.js';
import { fmtSilence, silentAfter } from './liveness.js';

const REFRESH_MS = 3000; // how often the list refreshes itself
const SINCE = { '10m': 600, '1h': 3600 }; // the "Output" filter's durations, in seconds

// A running log's seconds without output: the listing's silent_seconds, else its metadata's liveness.
const silence = (l) => (l.status === 'running' ? l.silent_seconds ?? (l.liveness && l.liveness.silent_seconds) ?? null : null);

// One short badge for a run something ended ("killed: silence", "killed: signal"); none for a task that
// exited by itself, nor for a lost one (its status says so).
function endedBadge(l) {
  if (!l.end_reason || l.end_reason === 'exit' || l.end_reason === 'lost') return null;
  const b = el('span', 'badge end', `killed: ${l.end_reason}`);
  b.dataset.reason = l.end_reason;
  b.title = l.end_reason === 'silence' ? 'logship ended it after a silence (--on-silence)'
    : l.end_reason === 'signal' ? `a signal ended it (exit ${l.exit_code})` : `ended: ${l.end_reason}`;
  return b;
}

export class TasksView {
  constructor() {
    this.ctl = new AbortController(); // close() aborts the refresh under way
  }

  async open() {
    this.timer = setInterval(() => this.refresh(), REFRESH_MS);
    await this.refresh();
  }

  close() {
    this.closed = true;
    clearInterval(this.timer);
    this.ctl.abort();
    $('#tasks tbody').replaceChildren(); // the next list shows only what it fetched itself
    setText('#tasks-note', '');
  }

  async refresh() {
    if (this.busy) { this.again = true; return; } // a filter changed during a refresh: one more after it
    this.busy = true;
    try {
      const q = new URLSearchParams({ limit: '1000' });
      if ($('#f-status').value) q.set('status', $('#f-status').value);
      if ($('#f-since').value) q.set('since', $('#f-since').value);
      const silentOnly = $('#f-silent').value; // 'now': the rows marked silent; else a duration for the API
      if (silentOnly && silentOnly !== 'now') q.set('silent_since', silentOnly);
      const { logs } = await apiJSON(`tasks?${q}`, { signal: this.ctl.signal });
      if (this.closed) return;
      const ft = $('#f-task').value.trim().toLowerCase(), fh = $('#f-host').value.trim().toLowerCase();
      let rows = logs.filter((l) => l.task.toLowerCase().includes(ft) && l.host.toLowerCase().includes(fh));
      if (silentOnly) rows = rows.filter((l) => l.status === 'running'); // only a running log is silent
      // a running log's size is in the spool: ask for the live size of the first 20, and its liveness (the
      // row's silent_seconds where the listing has it)
      await Promise.all(rows.filter((l) => l.status === 'running').slice(0, 20).map(async (l) => {
        try {
          const meta = await apiJSON(logPath(l.task, l.host), { signal: this.ctl.signal });
          l.size = meta.live_size;
          l.liveness = meta.liveness;
        } catch (e) { /* gone meanwhile */ }
      }));
      if (this.closed) return;
      for (const l of rows) l.silent = silence(l);
      // held to what the page knows too: an API without silent_since= answers every log
      if (silentOnly) rows = rows.filter((l) => l.silent != null && l.silent >= (SINCE[silentOnly] ?? silentAfter(l.liveness)));
      const hosts = new Map();
      for (const l of logs) hosts.set(l.task, (hosts.get(l.task) || 0) + 1);
      this.render(rows, hosts);
      setText('#tasks-note', `${rows.length} of ${logs.length} logs · refreshed ${fmtTime(Date.now() * 1e6, false).slice(11)}`);
      clearError();
    } catch (e) {
      if (!this.closed) showError(`task list: ${e.message}`);
    } finally {
      this.busy = false;
      if (this.again && !this.closed) { this.again = false; this.refresh(); }
    }
  }

  render(rows, hosts) {
    const now = Date.now();
    $('#tasks tbody').replaceChildren(...rows.map((l) => {
      const tr = el('tr');
      tr.dataset.task = l.task;
      tr.dataset.host = l.host;
      tr.dataset.status = l.status;
      const href = `#/t/${encodeURIComponent(l.task)}/${encodeURIComponent(l.host)}`;
      const status = el('td');
      status.append(el('span', `badge ${l.status}`, l.status));
      const ended = endedBadge(l);
      if (ended) status.append(ended);
      const silent = l.silent;
      if (silent != null && silent >= silentAfter(l.liveness)) { // a running log with no output for a while
        const mark = el('span', 'badge silent', `silent ${fmtSilence(silent)}`);
        mark.title = `no output for ${Math.floor(silent)} s`;
        status.append(mark);
        tr.dataset.silent = String(Math.floor(silent));
      }
      const task = el('td');
      const a = el('a', null, l.task);
      a.href = href;
      task.append(a);
      if (hosts.get(l.task) > 1) {
        const all = el('a', 'all', `all ${hosts.get(l.task)} hosts`);
        all.href = `#/t/${encodeURIComponent(l.task)}`;
        task.append(' ', all);
      }
      const end = l.ended_ns != null ? l.ended_ns / 1e6 : now;
      tr.append(status, task, el('td', null, l.host), timeEl('td', null, l.started_ns, false),
        el('td', null, fmtDuration(end - l.started_ns / 1e6)), el('td', 'num', fmtBytes(l.size)),
        el('td', `num ${l.exit_code ? 'bad' : ''}`, l.exit_code == null ? '—' : String(l.exit_code)));
      tr.onclick = (e) => { if (e.target.tagName !== 'A') location.hash = href; };
      return tr;
    }));
  }
}

// Is it hung? A running log's silence and its task's process tree (issue 15), and how a log the silence
// policy ended says so. The API beside the spool answers `liveness` in a log's metadata: the agent's last
// sample of the task's processes and the time of its last output byte. A view polls it, counts the silence
// on between answers, and hears from its tail at once when output resumes.

import { apiJSON, logPath } from './api.js';
import { $, el, fmtBytes, pad, timeEl } from './dom.js';

// Shown after this long without output: CI services stop a job after 10 min; a few seconds of quiet is
// normal for most tasks. A run with a shorter --silence-timeout shows it from half of that timeout.
export const SILENT_AFTER_S = 30;
const POLL_MS = 3000; // how often a running log's view asks for a new sample (the agent takes one every 5 s)
const POLL_NONE_MS = 10000; // the same where the answer had none (a central API reads a manifest for it)
const TICK_MS = 1000; // how often the shown silence counts on between answers

// What `ps` calls each state, for a person (the letter stays: it is what `ps` and /proc show).
const STATES = { R: 'running', S: 'sleeping', D: 'disk wait', Z: 'zombie', T: 'stopped', t: 'traced',
  I: 'idle', X: 'dead', W: 'paging', P: 'parked', K: 'wakekill' };
const STATE_HINTS = { D: 'uninterruptible: waiting on a disk or the network in the kernel',
  Z: 'exited, not yet reaped by its parent', T: 'stopped by a signal (SIGSTOP, Ctrl-Z)' };

export function silentAfter(live) {
  const t = live && live.silence && live.silence.timeout_seconds;
  return t ? Math.min(SILENT_AFTER_S, t / 2) : SILENT_AFTER_S;
}

// 45 s, 12 min, 3 h 5 min, 2 d 4 h: how long, at a glance.
export function fmtSilence(s) {
  if (s < 60) return `${Math.floor(s)} s`;
  const m = Math.floor(s / 60), h = Math.floor(m / 60), d = Math.floor(h / 24);
  if (h < 1) return `${m} min`;
  if (d < 1) return m % 60 ? `${h} h ${m % 60} min` : `${h} h`;
  return h % 24 ? `${d} d ${h % 24} h` : `${d} d`;
}

// CPU time as `ps` gives it, shorter: 0.03 s, 4:05, 1:02:03.
export function fmtCpu(s) {
  if (s == null) return '—';
  if (s < 60) return `${s.toFixed(2)} s`;
  const t = Math.floor(s), h = Math.floor(t / 3600);
  return h ? `${h}:${pad(Math.floor(t / 60) % 60)}:${pad(t % 60)}` : `${Math.floor(t / 60)}:${pad(t % 60)}`;
}

const at = (ns) => timeEl('span', null, ns, false); // a time that follows the zone toggle
const killEvent = (live) => live && (live.events || []).filter((e) => e.action === 'kill').pop();

// How a finished log ended, when not by itself: "killed after 10 min of silence" (the manifest's or
// exit.json's end_reason; a kill event of the agent's last sample says the same where neither is there).
export function endReason(meta) {
  const kill = killEvent(meta.liveness);
  const reason = meta.end_reason || (kill ? 'silence' : null);
  if (reason !== 'silence') return reason || null;
  const t = (meta.liveness && meta.liveness.silence && meta.liveness.silence.timeout_seconds) ?? (kill && kill.silent_seconds);
  return t != null ? `killed after ${fmtSilence(t)} of silence` : 'killed after a silence';
}

// The tree as `ps -o pid,stat,time,rss,wchan,cmd --forest` shows it: each process under its parent, the
// root first (the agent's sample lists the root first, then by pid).
export function forest(processes) {
  const pids = new Set(processes.map((p) => p.pid)), kids = new Map(), out = [];
  for (const p of processes) {
    const parent = pids.has(p.ppid) && p.ppid !== p.pid ? p.ppid : null;
    if (!kids.has(parent)) kids.set(parent, []);
    kids.get(parent).push(p);
  }
  const seen = new Set();
  const walk = (parent, depth) => {
    for (const p of kids.get(parent) || []) {
      if (seen.has(p.pid)) continue; // a loop in a hostile sample shows each process once
      seen.add(p.pid);
      out.push({ p, depth });
      walk(p.pid, depth + 1);
    }
  };
  walk(null, 0);
  for (const p of processes) if (!seen.has(p.pid)) out.push({ p, depth: 0 }); // in a cycle: still shown
  return out;
}

function psTable(processes, total) {
  if (!processes.length) return el('p', 'muted', 'no process sample (the agent reads /proc, which this host lacks)');
  const table = el('table', 'ps');
  const head = el('tr');
  for (const [h, cls] of [['PID', 'num'], ['STAT', ''], ['TIME', 'num'], ['RSS', 'num'], ['WCHAN', ''], ['COMMAND', '']]) {
    head.append(el('th', cls, h));
  }
  table.append(el('thead'));
  table.tHead.append(head);
  const body = el('tbody');
  for (const { p, depth } of forest(processes)) {
    const tr = el('tr', `st-${/^[A-Za-z]$/.test(p.state) ? p.state : 'x'}`);
    tr.dataset.pid = p.pid;
    tr.dataset.state = p.state;
    tr.dataset.depth = depth;
    const stat = el('td', 'stat');
    stat.append(el('b', null, p.state), ' ', el('span', 'muted', STATES[p.state] || ''));
    stat.title = STATE_HINTS[p.state] || STATES[p.state] || '';
    const cmd = el('td', 'cmd', `${depth ? '└ ' : ''}${p.command}`);
    cmd.style.paddingLeft = `${depth * 1.5 + 0.6}em`; // the tree, as ps --forest indents it
    cmd.title = p.command;
    tr.append(el('td', 'num', String(p.pid)), stat, el('td', 'num', fmtCpu(p.cpu_seconds)),
      el('td', 'num', fmtBytes(p.rss_bytes)), el('td', 'wchan', p.wchan || '—'), cmd);
    body.append(tr);
  }
  table.append(body);
  const wrap = el('div');
  wrap.append(table);
  if (total > processes.length) wrap.append(el('p', 'muted', `… and ${total - processes.length} more processes`));
  return wrap;
}

// Nothing of the last view's liveness: each view starts with the mark and the panel hidden.
export function resetLiveness() {
  const mark = $('#silence');
  mark.hidden = true;
  mark.textContent = '';
  const panel = $('#liveness');
  panel.hidden = true;
  panel.replaceChildren();
}

// One running log's silence now: its last sample's count carried on since the answer, ended by output the
// tail brought (the sample may be a few seconds older than that output).
class Clock {
  constructor() {
    this.live = null; // the last `liveness` answered
    this.at = 0; // performance.now() of that answer
    this.outputAt = null; // performance.now() of the last output the tail brought
    this.cpuRate = null; // CPU seconds per second between the last two samples: a quiet task computing, or idle
  }

  take(live) {
    const prev = this.live;
    this.live = live || null;
    this.at = performance.now();
    if (prev && live && prev.cpu_seconds != null && live.cpu_seconds != null && live.sampled_ns > prev.sampled_ns) {
      this.cpuRate = Math.max(0, live.cpu_seconds - prev.cpu_seconds) / ((live.sampled_ns - prev.sampled_ns) / 1e9);
    }
  }

  heard() { this.outputAt = performance.now(); }

  // Seconds without output now, or null when unknown (no sample: a central API, or no /proc).
  seconds() {
    const now = performance.now();
    const fromSample = this.live ? this.live.silent_seconds + (now - this.at) / 1000 : null;
    const fromTail = this.outputAt != null ? (now - this.outputAt) / 1000 : null;
    if (fromSample == null) return fromTail != null && fromTail >= SILENT_AFTER_S ? fromTail : null;
    return fromTail == null ? fromSample : Math.min(fromSample, fromTail);
  }

  // The seconds to show, or null while it is not silent for long enough to say so.
  shown() {
    const s = this.seconds();
    return s != null && s >= silentAfter(this.live) ? s : null;
  }
}

// One log view's liveness: `view` is its Pane (timers that stop at close, the abort signal, the log's path).
export class Liveness {
  constructor(view) {
    this.view = view;
    this.clock = new Clock();
    this.running = false;
    this.shown = null; // the processes' sample shown in the panel (re-rendered only when it changes)
  }

  get live() { return this.clock.live; }

  // A running log: poll its metadata and count the silence on. A finished one: show why it ended.
  start(meta) {
    this.take(meta.liveness);
    this.running = meta.status === 'running';
    if (this.running) {
      this.poll = this.view.later(() => this.refresh(), this.live ? POLL_MS : POLL_NONE_MS);
      this.tick();
    } else this.showEnd(meta);
  }

  take(live) { this.clock.take(live); }

  async refresh() {
    try {
      const meta = await apiJSON(this.view.path, { signal: this.view.signal });
      if (this.view.closed || !this.running) return;
      this.take(meta.liveness);
      if (meta.status === 'running') this.render();
      else { this.running = false; this.showEnd(meta); } // ended while its tail was paused
    } catch (e) { /* the next answer will do: the log's lines matter more than this */ }
    if (!this.view.closed && this.running) {
      this.poll = this.view.later(() => this.refresh(), this.live ? POLL_MS : POLL_NONE_MS);
    }
  }

  tick() {
    if (!this.running) return; // ended: nothing counts on
    this.render();
    this.timer = this.view.later(() => this.tick(), TICK_MS);
  }

  // The tail brought output: the silence ends now, whatever the last sample says.
  sawOutput() {
    this.clock.heard();
    if (this.running && !$('#silence').hidden) this.render();
  }

  render() {
    if (!this.running) return;
    const s = this.clock.shown(), on = s != null;
    const mark = $('#silence');
    mark.hidden = !on;
    if (!on) {
      $('#liveness').hidden = true;
      return;
    }
    mark.textContent = `silent ${fmtSilence(s)}`;
    mark.dataset.seconds = String(Math.floor(s));
    mark.title = `no output for ${Math.floor(s)} s` + (this.live && this.live.silence
      ? ` (this run ${this.live.silence.action === 'kill' ? 'is killed' : 'warns'} after ${fmtSilence(this.live.silence.timeout_seconds)})` : '');
    if (this.live) this.showTree(this.live, this.summary(this.live));
  }

  // The summary line, as nodes: its times follow the page's zone toggle (dom.js retime).
  summary(live) {
    const n = live.processes_total || live.processes.length;
    const rate = this.clock.cpuRate; // "CPU 0%": silent and idle, the likeliest hang
    const kill = killEvent(live); // the policy sent TERM and waits out the grace before KILL
    const out = kill && kill.at_ns >= live.last_output_ns
      ? ['Being killed for its silence (TERM sent ', at(kill.at_ns), ')'] : ['What the task is doing'];
    if (live.last_output_ns) out.push(' · last output ', at(live.last_output_ns));
    out.push(` · ${n} process${n === 1 ? '' : 'es'} · CPU ${fmtCpu(live.cpu_seconds)} in all`
      + (rate != null ? `, ${Math.round(rate * 100)}% now` : ''));
    if (live.sampled_ns) out.push(` · sampled ${fmtSilence(Math.max(0, (Date.now() * 1e6 - live.sampled_ns) / 1e9))} ago`);
    return out;
  }

  // The panel: a summary line (nodes) and the tree, in a <details> the user may fold (kept folded across samples).
  showTree(live, summary, processes = live.processes) {
    const panel = $('#liveness');
    let details = panel.querySelector('details');
    if (!details) {
      details = el('details');
      details.open = true;
      details.append(el('summary'));
      panel.replaceChildren(details);
    }
    details.querySelector('summary').replaceChildren(...summary);
    if (this.shown !== processes) {
      this.shown = processes;
      details.querySelector('summary').after(psTable(processes, processes === live.processes ? live.processes_total || 0 : 0));
      while (details.children.length > 2) details.lastElementChild.remove();
    }
    panel.hidden = false;
  }

  // The log ended: the tail's end message says how, the metadata says why (end_reason) and holds the last
  // sample, so it is read once more.
  async ended() {
    this.running = false;
    const meta = await apiJSON(this.view.path, { signal: this.view.signal });
    if (this.view.closed) return null;
    this.take(meta.liveness);
    this.showEnd(meta);
    return meta;
  }

  // A log the silence policy killed shows the processes as they were when it was killed; others nothing.
  showEnd(meta) {
    $('#silence').hidden = true;
    $('#liveness').hidden = true;
    const kill = killEvent(meta.liveness);
    if (kill && kill.processes && kill.processes.length) {
      this.showTree(meta.liveness, ['The processes when they were killed, ', at(kill.at_ns),
        `, after ${fmtSilence(kill.silent_seconds)} without output`], kill.processes);
    }
  }
}

// The all-hosts view: a mark beside each running host that is silent (the host's own view has its processes).
// Polls the metadata of at most MAX_HOSTS running hosts.
const MAX_HOSTS = 20;

export class HostSilence {
  constructor(view) {
    this.view = view; // the MultiView: its task, timers and abort signal
    this.clocks = new Map(); // host -> Clock, for running hosts
  }

  start(metas) {
    for (const [host, meta] of metas) {
      if (meta.status !== 'running' || this.clocks.size >= MAX_HOSTS) continue;
      const c = new Clock();
      c.take(meta.liveness);
      this.clocks.set(host, c);
    }
    if (!this.clocks.size) return;
    this.view.later(() => this.refresh(), POLL_MS);
    this.tick();
  }

  async refresh() {
    await Promise.all([...this.clocks].map(async ([host, c]) => {
      try {
        const meta = await apiJSON(logPath(this.view.task, host), { signal: this.view.signal });
        if (meta.status === 'running') c.take(meta.liveness); else this.ended(host);
      } catch (e) { /* the next answer will do */ }
    }));
    if (!this.view.closed && this.clocks.size) this.view.later(() => this.refresh(), POLL_MS);
  }

  tick() {
    this.render();
    if (this.clocks.size) this.view.later(() => this.tick(), TICK_MS);
  }

  heard(host) {
    const c = this.clocks.get(host);
    if (c) { c.heard(); this.render(); }
  }

  ended(host) {
    this.clocks.delete(host);
    this.render();
  }

  render() {
    if (this.view.closed) return; // the host filter is the next view's now
    for (const item of document.querySelectorAll('#host-filter .host')) {
      const c = this.clocks.get(item.dataset.host), s = c ? c.shown() : null;
      let mark = item.querySelector('.badge.silent');
      if (s == null) { if (mark) mark.remove(); continue; }
      if (!mark) { mark = el('span', 'badge silent'); item.append(mark); }
      mark.textContent = `silent ${fmtSilence(s)}`;
      mark.title = `${item.dataset.host}: no output for ${Math.floor(s)} s (its own view shows its processes)`;
    }
  }
}

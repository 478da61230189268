// The live tail: a WebSocket that resumes by offset, and the connection state shown for a set of tails.

import { logPath, wsURL } from './api.js';
import { $ } from './dom.js';

const BACKOFF_MS = [250, 500, 1000, 2000, 4000, 5000]; // reconnect delays; the last one repeats
const enc = new TextEncoder();

// Keeps the offset after the last message and reconnects from it with capped backoff. Text replaces
// invalid UTF-8, so a message holding U+FFFD may be shorter or longer in bytes than its text: the tail
// then resumes from that message's own offset and drops the one repeat of it.
export class Tail {
  constructor(task, host, start, on) {
    this.path = `${logPath(task, host)}/tail`;
    this.pos = start.from ?? null; // offset after the last byte received (null: begin with `lines`)
    this.lines = start.lines ?? 100;
    this.exact = true;
    this.lastOff = null;
    this.on = on;
    this.attempt = 0;
    this.ws = null;
    this.timer = null;
    this.state = 'idle';
    this.ended = false;
  }

  setState(state, detail = '') {
    this.state = state;
    this.detail = detail;
    this.on.state();
  }

  start() {
    if (this.ended || this.ws || this.timer) return;
    this.stopped = false;
    this.connect();
  }

  stop(state = 'paused') {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = null;
    if (this.ws) { const ws = this.ws; this.ws = null; ws.close(); }
    if (!this.ended) this.setState(state);
  }

  connect() {
    this.timer = null;
    const q = new URLSearchParams();
    if (this.pos == null) q.set('lines', this.lines);
    else q.set('from', this.exact ? this.pos : this.lastOff);
    this.repeatAt = this.exact ? null : this.lastOff;
    if (!this.attempt) this.setState('connecting');
    const ws = new WebSocket(wsURL(`${this.path}?${q}`));
    this.ws = ws;
    ws.onopen = () => { if (ws === this.ws) this.setState('connected'); };
    ws.onmessage = (e) => { if (ws === this.ws) { this.attempt = 0; this.handle(JSON.parse(e.data)); } };
    ws.onclose = () => {
      if (ws !== this.ws) return;
      this.ws = null;
      if (!this.ended && !this.stopped) this.retry();
    };
  }

  retry() {
    const delay = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    this.attempt++;
    this.setState('reconnecting', `attempt ${this.attempt}, in ${delay / 1000} s`);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  handle(m) {
    if (m.data !== undefined) {
      if (this.repeatAt != null) {
        const again = m.offset === this.repeatAt;
        this.repeatAt = null;
        if (again) return;
      }
      let bytes = enc.encode(m.data), off = m.offset;
      if (this.pos != null && this.exact && off < this.pos) { // never expected; never shown twice
        if (off + bytes.length <= this.pos) return;
        bytes = bytes.subarray(this.pos - off);
        off = this.pos;
      }
      this.pos = off + bytes.length;
      this.exact = !m.data.includes('\ufffd');
      this.lastOff = m.offset;
      this.on.data(off, bytes, m.stream, m.ts);
    } else if (m.event === 'skipped') {
      this.pos = m.to;
      this.exact = true;
      this.on.skipped(m);
    } else if (m.event === 'end') {
      this.ended = true;
      this.setState('ended', m.exit_code != null ? `exit ${m.exit_code}` : m.status);
      this.on.end(m);
    } else if (m.event === 'error') {
      this.on.error(m);
      if (m.error !== 'internal') { this.stop('failed'); this.setState('failed', m.detail); }
    }
  }
}

export function showConn(tails) {
  const c = $('#conn');
  const states = tails.map((t) => t.state);
  const pick = (s) => states.includes(s);
  let state = 'idle', text = 'idle';
  if (!tails.length) { state = 'idle'; text = 'no tail'; }
  else if (pick('failed')) { state = 'failed'; text = 'failed: ' + tails.find((t) => t.state === 'failed').detail; }
  else if (pick('reconnecting')) { state = 'reconnecting'; text = 'reconnecting… ' + tails.find((t) => t.state === 'reconnecting').detail; }
  else if (pick('connecting')) { state = 'connecting'; text = 'connecting…'; }
  else if (pick('paused')) { state = 'paused'; text = 'paused'; }
  else if (pick('connected')) { state = 'connected'; text = 'live'; }
  else if (states.every((s) => s === 'ended')) { state = 'ended'; text = tails.length === 1 ? `ended · ${tails[0].detail}` : 'ended'; }
  c.dataset.state = state;
  c.textContent = text;
}

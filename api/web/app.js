// The logship web page: the task list, a live log view, search and downloads. Plain JS, no build step.
//
// The log view is a window [lo, hi) over the log's bytes. It opens at the end (the last CHUNK bytes by
// Range), loads earlier chunks by Range as you scroll up and later ones as you scroll down, and keeps
// at most MAX_ROWS rows in the page, dropping the far end. The chunk index (GET …/index) gives each
// chunk's stream and time and the number of lines before it, so line numbers and stdout/stderr are
// exact wherever the window is. New bytes come from the live tail (WebSocket) while the window holds
// the end; the tail reconnects from its last offset, so nothing is shown twice or missed.
'use strict';

const CHUNK = 256 * 1024; // bytes per Range read
const MAX_ROWS = 5000; // line elements kept in the page
const MAX_LINE_CHARS = 20000; // longer lines are cut on screen (the download has them whole)
const TAIL_LINES = 200; // lines per host the all-hosts view starts with
const REFRESH_MS = 3000; // the task list refreshes itself this often
const BACKOFF_MS = [250, 500, 1000, 2000, 4000, 5000]; // reconnect delays; the last one repeats
const API = 'api/v1/';
const TOKEN_KEY = 'logship.token';

const $ = (sel) => document.querySelector(sel);
const enc = new TextEncoder();
const dec = new TextDecoder();

// --- the API: token, fetch, URLs ------------------------------------------------------------------

const auth = {
  get token() { return localStorage.getItem(TOKEN_KEY) || ''; },
  set token(t) { if (t) localStorage.setItem(TOKEN_KEY, t); else localStorage.removeItem(TOKEN_KEY); },
  headers(extra = {}) { return this.token ? { ...extra, Authorization: `Bearer ${this.token}` } : extra; },
  // WebSockets and download links cannot carry a header: the API also takes ?token=
  url(u) {
    if (!this.token) return u;
    return u + (u.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(this.token);
  },
};

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.detail ? `${body.detail}${body.hint ? ' — ' + body.hint : ''}` : `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function api(path, opts = {}) {
  const r = await fetch(API + path, { ...opts, headers: auth.headers(opts.headers || {}) });
  if (r.status === 401) askToken();
  if (!r.ok) {
    let body = null;
    try { body = await r.json(); } catch (e) { /* not JSON */ }
    throw new ApiError(r.status, body);
  }
  return r;
}

const apiJSON = async (path) => (await api(path)).json();
const logPath = (task, host) => `tasks/${encodeURIComponent(task)}/hosts/${encodeURIComponent(host)}`;

function wsURL(path) {
  const u = new URL(API + path, location.href);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  return auth.url(u.toString());
}

function askToken() {
  const d = $('#token-dialog');
  if (!d.open) d.showModal();
}

// --- formatting -----------------------------------------------------------------------------------

function fmtBytes(n) {
  if (n == null) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(n < 10 ? 1 : 0) : n} ${units[i]}`;
}

function fmtDuration(ms) {
  if (ms == null || ms < 0) return '—';
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${(ms / 1000).toFixed(1)} s`;
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h} h ${m} min` : `${m} min ${s % 60} s`;
}

const pad = (n, w = 2) => String(n).padStart(w, '0');

function fmtStart(ns) {
  const d = new Date(ns / 1e6);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function fmtTs(ns) {
  const d = new Date(ns / 1e6);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

// --- ANSI colours ---------------------------------------------------------------------------------

// SGR sequences set the style; other escape sequences (cursor moves, titles) are left out.
const ESC_RE = /\x1b\[([0-9;:?]*)([ -\/]*[@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]?/g;
const CTRL_RE = /[\x00-\x08\x0b-\x1f\x7f]/g; // shown as visible symbols (␀, ␛, …)

function palette256(n) {
  if (n < 16) return null; // a class: the theme's 16 colours
  if (n >= 232) { const v = 8 + (n - 232) * 10; return `rgb(${v},${v},${v})`; }
  n -= 16;
  const c = (v) => (v ? 55 + v * 40 : 0);
  return `rgb(${c(Math.floor(n / 36))},${c(Math.floor(n / 6) % 6)},${c(n % 6)})`;
}

function applySGR(st, params) {
  const p = params === '' ? [0] : params.split(/[;:]/).map((x) => (x === '' ? 0 : parseInt(x, 10)));
  for (let i = 0; i < p.length; i++) {
    const c = p[i];
    if (c === 0) { st.fg = st.bg = null; st.b = st.d = st.i = st.u = st.inv = false; }
    else if (c === 1) st.b = true;
    else if (c === 2) st.d = true;
    else if (c === 3) st.i = true;
    else if (c === 4) st.u = true;
    else if (c === 7) st.inv = true;
    else if (c === 22) st.b = st.d = false;
    else if (c === 23) st.i = false;
    else if (c === 24) st.u = false;
    else if (c === 27) st.inv = false;
    else if (c >= 30 && c <= 37) st.fg = c - 30;
    else if (c >= 90 && c <= 97) st.fg = c - 90 + 8;
    else if (c === 39) st.fg = null;
    else if (c >= 40 && c <= 47) st.bg = c - 40;
    else if (c >= 100 && c <= 107) st.bg = c - 100 + 8;
    else if (c === 49) st.bg = null;
    else if (c === 38 || c === 48) {
      let v = null;
      if (p[i + 1] === 5) { v = p[i + 2] ?? 0; i += 2; }
      else if (p[i + 1] === 2) { v = `rgb(${p[i + 2] ?? 0},${p[i + 3] ?? 0},${p[i + 4] ?? 0})`; i += 4; }
      if (c === 38) st.fg = v; else st.bg = v;
    }
  }
}

function styled(text, st) {
  const fg = st.inv ? st.bg : st.fg, bg = st.inv ? (st.fg ?? 'inv') : st.bg;
  if (fg == null && bg == null && !st.b && !st.d && !st.i && !st.u) return document.createTextNode(text);
  const s = el('span', null, text);
  const color = (v, kind) => {
    if (v == null) return;
    if (v === 'inv') { s.classList.add('inv'); return; }
    const css = typeof v === 'number' ? palette256(v) : v;
    if (css) s.style[kind === 'fg' ? 'color' : 'backgroundColor'] = css;
    else s.classList.add(`${kind}${v}`);
  };
  color(fg, 'fg');
  color(bg, 'bg');
  if (st.b) s.classList.add('ab');
  if (st.d) s.classList.add('ad');
  if (st.i) s.classList.add('ai');
  if (st.u) s.classList.add('au');
  return s;
}

const ctrl = (c) => String.fromCharCode(c === '\x7f' ? 0x2421 : 0x2400 + c.charCodeAt(0));

// What a terminal shows of a line: after a carriage return, the last text written over it.
function terminalText(text) {
  text = text.replace(/\r+$/, '');
  if (text.includes('\r')) {
    const parts = text.split('\r').filter((x) => x !== '');
    text = parts.length ? parts[parts.length - 1] : '';
  }
  return text;
}

function renderAnsi(text, into) {
  const st = { fg: null, bg: null };
  let last = 0;
  ESC_RE.lastIndex = 0;
  for (let m; (m = ESC_RE.exec(text)) !== null;) {
    if (m.index > last) into.append(styled(text.slice(last, m.index).replace(CTRL_RE, ctrl), st));
    if (m[2] === 'm') applySGR(st, m[1]);
    last = ESC_RE.lastIndex;
    if (m[0] === '') ESC_RE.lastIndex++;
  }
  if (last < text.length) into.append(styled(text.slice(last).replace(CTRL_RE, ctrl), st));
}

const stripAnsi = (text) => text.replace(ESC_RE, '');

// --- lines out of chunks --------------------------------------------------------------------------

// Turns the log's chunks (bytes, each of one stream) into lines. A line is numbered by the rank of its
// newline in the whole log, as the query copy's line_no and `sed -n Np` count; a line a stream began
// in one chunk and ended in a later one (another stream's chunk between) is one line of its stream.
class Assembler {
  constructor(line) {
    this.line = line; // newlines before the next byte fed
    this.pending = new Map(); // stream -> {off, parts, ts}: an unfinished line
  }

  feed(off, bytes, stream, ts, out) {
    let start = 0;
    for (let nl = bytes.indexOf(10); nl >= 0; nl = bytes.indexOf(10, start)) {
      const p = this.pending.get(stream);
      let raw = bytes.subarray(start, nl);
      let first = off + start, t = ts;
      if (p) {
        raw = concat([...p.parts, raw]);
        first = p.off;
        t = p.ts;
        this.pending.delete(stream);
      }
      this.line++;
      out.push({ off: first, end: off + nl + 1, n: this.line, c: this.line, stream, ts: t, text: dec.decode(raw) });
      start = nl + 1;
    }
    if (start < bytes.length) {
      const p = this.pending.get(stream);
      const rest = bytes.slice(start);
      if (p) p.parts.push(rest);
      else this.pending.set(stream, { off: off + start, parts: [rest], ts });
    }
  }

  partials() {
    return [...this.pending.entries()].map(([stream, p]) => (
      { off: p.off, end: null, n: null, stream, ts: p.ts, text: dec.decode(concat(p.parts)), partial: true }));
  }
}

function concat(arrays) {
  if (arrays.length === 1) return arrays[0];
  const out = new Uint8Array(arrays.reduce((n, a) => n + a.length, 0));
  let at = 0;
  for (const a of arrays) { out.set(a, at); at += a.length; }
  return out;
}

const STREAM_CLASS = { stdout: 'o', stderr: 'e', unknown: 'u' };

function rowElement(row, host) {
  const r = el('div', `r ${STREAM_CLASS[row.stream] || 'u'}${row.partial ? ' partial' : ''}`);
  r.dataset.stream = row.stream;
  if (row.n != null) r.dataset.n = row.n;
  r.append(el('span', 'n', row.n == null ? '' : String(row.n)));
  const t = el('span', 't', row.ts ? fmtTs(row.ts) : '');
  if (row.ts) t.title = new Date(row.ts / 1e6).toISOString();
  r.append(t);
  if (host != null) { r.append(el('span', 'h', host)); r.dataset.host = host; }
  const x = el('span', 'x');
  let text = terminalText(row.text);
  const cut = text.length > MAX_LINE_CHARS;
  if (cut) text = text.slice(0, MAX_LINE_CHARS);
  renderAnsi(text, x);
  if (cut) x.append(el('span', 'cut', ` … ${row.text.length - MAX_LINE_CHARS} more characters (in the download)`));
  r.append(x);
  return r;
}

// c: the lines ended up to the row's end (for a skipped range, those before it)
function skippedRow(m, c = null) {
  return { off: m.from, end: m.to, n: null, c, stream: 'skip', ts: null, text: `… ${fmtBytes(m.bytes)} dropped at the spool quota …` };
}

// --- the live tail: a WebSocket that resumes by offset ---------------------------------------------

// Keeps the offset after the last message and reconnects from it with capped backoff. Text replaces
// invalid UTF-8, so a message holding U+FFFD may be shorter or longer in bytes than its text: the tail
// then resumes from that message's own offset and drops the one repeat of it.
class Tail {
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

// --- the log view: one host, a window over the bytes ---------------------------------------------

class LogView {
  constructor(task, host, at) {
    this.task = task;
    this.host = host;
    this.at = at; // a byte offset to open at (a search hit), else the end
    this.log = $('#log');
    this.rowsEl = $('#rows');
    this.partialEl = $('#partial');
    this.rows = []; // {off, end, n, stream, ts, text, el}, in line order
    this.lo = this.hi = 0; // the window's bytes
    this.bottom = new Assembler(0); // lines at the window's end, continued by later bytes
    this.liveEnd = 0; // the offset after the last byte the tail gave
    this.attached = false; // the window ends where the tail is: its bytes are appended
    this.following = true;
    this.gen = 0; // bumped by each jump: answers for an older window are dropped
    this.loading = null;
    this.newLines = 0;
    this.paused = false;
  }

  async open() {
    this.clear();
    setText('#log-size', '');
    const meta = await apiJSON(logPath(this.task, this.host));
    this.meta = meta;
    this.liveEnd = meta.live_size;
    this.showMeta();
    if (this.at != null && this.at < meta.live_size) await this.loadAround(this.at);
    else await this.loadEnd();
    this.tail = new Tail(this.task, this.host, { from: this.liveEnd }, {
      data: (off, bytes, stream, ts) => this.onData(off, bytes, stream, ts),
      skipped: (m) => this.onSkipped(m),
      end: (m) => this.onEnd(m),
      error: (m) => showError(`tail: ${m.detail}`),
      state: () => showConn([this.tail]),
    });
    if (!this.paused) this.tail.start();
  }

  close() {
    this.gen++;
    if (this.tail) this.tail.stop('closed');
  }

  showMeta() {
    const m = this.meta;
    const badge = $('#log-status');
    badge.textContent = m.status + (m.exit_code != null ? ` · exit ${m.exit_code}` : '');
    badge.dataset.status = m.status;
    setText('#log-size', fmtBytes(Math.max(m.live_size, this.liveEnd)));
  }

  // --- reading by Range --------------------------------------------------------------------------

  async index(start, end) {
    return apiJSON(`${logPath(this.task, this.host)}/index?start=${start}&end=${end}`);
  }

  async bytes(a, b) {
    const r = await api(`${logPath(this.task, this.host)}/log`, { headers: { Range: `bytes=${a}-${b - 1}` } });
    return new Uint8Array(await r.arrayBuffer());
  }

  // The lines of `chunks` between offsets a and b, fed to `asm`.
  async linesOf(chunks, a, b, asm) {
    const out = [];
    if (b <= a) return out;
    const data = await this.bytes(a, b);
    for (const [off, len, , stream, , ts] of chunks) {
      const s = Math.max(off, a), e = Math.min(off + len, b);
      if (s < e) asm.feed(s, data.subarray(s - a, e - a), stream, ts, out);
    }
    return out;
  }

  // A new window of the chunks overlapping [a, b); keep = which end to keep if it has too many lines.
  async loadWindow(a, b, keep) {
    const gen = ++this.gen;
    const idx = await this.index(a, b);
    const asm = new Assembler(idx.line ?? 0);
    let lo = a, hi = a, rows = [];
    if (idx.chunks.length) {
      const last = idx.chunks[idx.chunks.length - 1];
      lo = idx.chunks[0][0];
      hi = last[0] + last[1];
      rows = await this.linesOf(idx.chunks, lo, hi, asm);
    }
    if (gen !== this.gen) return false;
    this.clear();
    this.lo = lo;
    this.hi = hi;
    this.firstLine = idx.line ?? 0;
    this.bottom = asm;
    this.attached = hi >= this.liveEnd || hi >= idx.size;
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
    const end = this.tail ? this.liveEnd : this.meta.live_size;
    if (await this.loadWindow(Math.max(0, end - CHUNK), end, 'end')) {
      this.setFollowing(true);
      this.scrollBottom();
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
    if (this.loading || this.lo <= 0) return;
    const gen = this.gen, lo = this.lo;
    this.loading = (async () => {
      const idx = await this.index(Math.max(0, lo - CHUNK), lo);
      if (!idx.chunks.length) { if (gen === this.gen) this.lo = 0; return; }
      const a = idx.chunks[0][0];
      const rows = await this.linesOf(idx.chunks, a, lo, new Assembler(idx.line ?? 0));
      if (gen !== this.gen) return;
      this.lo = a;
      this.firstLine = idx.line ?? 0;
      this.insert(rows, 'prepend', { keep: 'end', limit: MAX_ROWS / 2, drop: 'bottom' });
    })();
    this.settle();
  }

  // Later bytes, as the user scrolls down a window that no longer holds the end.
  loadLater() {
    if (this.loading || this.attached) return;
    const gen = this.gen, hi = this.hi;
    this.loading = (async () => {
      const idx = await this.index(hi, Math.max(hi + 1, Math.min(hi + CHUNK, this.liveEnd)));
      if (gen !== this.gen) return;
      let rows = [], end = hi;
      if (idx.chunks.length) {
        const last = idx.chunks[idx.chunks.length - 1];
        end = last[0] + last[1];
        rows = await this.linesOf(idx.chunks, hi, end, this.bottom);
        if (gen !== this.gen) return;
      }
      this.hi = end;
      this.attached = end >= this.liveEnd || end >= idx.size;
      this.liveEnd = Math.max(this.liveEnd, end);
      this.insert(rows, 'append', { keep: 'start', limit: MAX_ROWS / 2, drop: 'top' });
      if (this.attached) this.showNewLines(0);
    })();
    this.settle();
  }

  settle() {
    this.loading.catch((e) => showError(e.message)).finally(() => {
      this.loading = null;
      this.checkEdges();
    });
  }

  checkEdges() {
    this.showEdges();
    if (this.loading) return;
    const margin = this.log.clientHeight;
    if (this.log.scrollTop < margin && this.lo > 0 && !this.following) this.loadEarlier();
    else if (this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < margin && !this.attached) {
      this.loadLater();
    }
  }

  showEdges() {
    const top = $('#top-edge'), bottom = $('#bottom-edge');
    top.textContent = this.lo > 0 ? `⇡ ${fmtBytes(this.lo)} before — scroll up or press Home for the first line` : '';
    top.hidden = this.lo <= 0;
    bottom.textContent = this.attached ? '' : `⇣ ${fmtBytes(this.liveEnd - this.hi)} after — scroll down or press End`;
    bottom.hidden = this.attached;
  }

  // --- the rows in the page ----------------------------------------------------------------------

  clear() {
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
    const shift = keepFirst ? keepFirst.el.offsetTop - this.rows[0].el.offsetTop : 0;
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
    this.partialEl.replaceChildren();
  }

  renderPartials() {
    this.partialEl.replaceChildren(...this.bottom.partials().map((r) => rowElement(r)));
  }

  // --- the tail ----------------------------------------------------------------------------------

  onData(off, bytes, stream, ts) {
    const end = off + bytes.length;
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
  }

  onSkipped(m) {
    if (this.attached) {
      this.hi = m.to;
      this.queue([skippedRow(m, this.bottom.line)]);
    }
    this.liveEnd = Math.max(this.liveEnd, m.to);
  }

  async onEnd(m) {
    this.meta = { ...this.meta, status: m.status, exit_code: m.exit_code };
    this.showMeta();
    this.flush();
  }

  // Rows from the tail are added at most every 30 ms, in one go.
  queue(rows) {
    (this.pending ||= []).push(...rows);
    if (!this.flushTimer) this.flushTimer = setTimeout(() => this.flush(), 30);
  }

  flush() {
    clearTimeout(this.flushTimer);
    this.flushTimer = null;
    const rows = this.pending || [];
    this.pending = [];
    this.insert(rows, 'append', this.following ? { keep: 'end', drop: 'top' } : { keep: 'start', drop: 'none' });
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

  setFollowing(on) {
    this.following = on;
    $('#follow').setAttribute('aria-pressed', String(on));
  }

  scrollBottom() {
    this.log.scrollTop = this.log.scrollHeight;
  }

  onScroll() {
    const atBottom = this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 4;
    if (!atBottom && this.following) this.setFollowing(false);
    else if (atBottom && this.attached && !this.following) this.setFollowing(true);
    if (this.following) this.showNewLines(0);
    this.checkEdges();
  }

  jumpTop() {
    if (this.lo === 0) { this.setFollowing(false); this.log.scrollTop = 0; this.checkEdges(); return; }
    this.loadStart().catch((e) => showError(e.message));
  }

  jumpBottom() {
    this.showNewLines(0);
    if (this.attached) { this.setFollowing(true); this.scrollBottom(); return; }
    this.loadEnd().catch((e) => showError(e.message));
  }

  pause(on) {
    this.paused = on;
    if (!this.tail) return;
    if (on) { this.tail.stop('paused'); this.flush(); } else this.tail.start();
  }

  downloads() {
    const base = API + `${logPath(this.task, this.host)}/log`;
    const name = `${this.task}.${this.host}`;
    return [[base, `${name}.log`], [`${base}?stream=stdout`, `${name}.stdout.log`],
      [`${base}?stream=stderr`, `${name}.stderr.log`]];
  }
}

function countNewlines(bytes) {
  let n = 0;
  for (let i = bytes.indexOf(10); i >= 0; i = bytes.indexOf(10, i + 1)) n++;
  return n;
}

// --- all hosts of a task: one tail per host, lines merged by time -----------------------------------

class MultiView {
  constructor(task) {
    this.task = task;
    this.log = $('#log');
    this.rowsEl = $('#rows');
    this.rows = [];
    this.tails = [];
    this.following = true;
    this.paused = false;
    this.attached = true;
  }

  async open() {
    this.rowsEl.replaceChildren();
    $('#partial').replaceChildren();
    $('#top-edge').hidden = $('#bottom-edge').hidden = true;
    const list = await apiJSON(`tasks?task=${encodeURIComponent(this.task)}&limit=1000`);
    this.hosts = list.logs.map((l) => l.host).sort();
    const running = list.logs.filter((l) => l.status === 'running').length;
    const badge = $('#log-status');
    badge.textContent = `${this.hosts.length} host${this.hosts.length === 1 ? '' : 's'}${running ? `, ${running} running` : ''}`;
    badge.dataset.status = running ? 'running' : 'finished';
    setText('#log-size', fmtBytes(list.logs.reduce((n, l) => n + (l.size || 0), 0)));
    const filter = $('#host-filter');
    filter.replaceChildren(...this.hosts.map((h) => {
      const label = el('label', 'chk');
      const box = el('input');
      box.type = 'checkbox';
      box.checked = true;
      box.onchange = () => this.filterHost(h, box.checked);
      label.append(box, ` ${h}`);
      return label;
    }));
    for (const host of this.hosts) {
      const asm = new Assembler(0);
      const tail = new Tail(this.task, host, { lines: TAIL_LINES }, {
        data: (off, bytes, stream, ts) => {
          const out = [];
          asm.feed(off, bytes, stream, ts, out);
          for (const r of out) { r.n = null; r.host = host; }
          this.add(out);
        },
        skipped: (m) => this.add([{ ...skippedRow(m), host, ts: Date.now() * 1e6 }]),
        end: () => {},
        error: (m) => showError(`${host}: ${m.detail}`),
        state: () => showConn(this.tails),
      });
      this.tails.push(tail);
    }
    if (!this.paused) for (const t of this.tails) t.start();
    showConn(this.tails);
  }

  close() { for (const t of this.tails) t.stop('closed'); }

  // Insert by time: a host's backlog falls between the others' lines.
  add(rows) {
    for (const r of rows) {
      r.el = rowElement(r, r.host);
      if (this.hidden && this.hidden.has(r.host)) r.el.hidden = true;
      let lo = 0, hi = this.rows.length;
      while (lo < hi) { const mid = (lo + hi) >> 1; if (this.rows[mid].ts <= r.ts) lo = mid + 1; else hi = mid; }
      if (lo === this.rows.length) this.rowsEl.append(r.el);
      else this.rowsEl.insertBefore(r.el, this.rows[lo].el);
      this.rows.splice(lo, 0, r);
    }
    if (this.rows.length > MAX_ROWS) for (const r of this.rows.splice(0, this.rows.length - MAX_ROWS)) r.el.remove();
    if (this.following) this.log.scrollTop = this.log.scrollHeight;
  }

  filterHost(host, show) {
    (this.hidden ||= new Set())[show ? 'delete' : 'add'](host);
    for (const r of this.rows) if (r.host === host) r.el.hidden = !show;
  }

  setFollowing(on) { this.following = on; $('#follow').setAttribute('aria-pressed', String(on)); }
  onScroll() {
    const atBottom = this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 4;
    if (atBottom !== this.following) this.setFollowing(atBottom);
  }
  jumpTop() { this.setFollowing(false); this.log.scrollTop = 0; }
  jumpBottom() { this.setFollowing(true); this.log.scrollTop = this.log.scrollHeight; }
  pause(on) { this.paused = on; for (const t of this.tails) if (on) t.stop('paused'); else t.start(); }
  downloads() { return [[API + `tasks/${encodeURIComponent(this.task)}/log`, `${this.task}.all-hosts.log`]]; }
}

// --- connection state ---------------------------------------------------------------------------------

function showConn(tails) {
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

// --- the task list --------------------------------------------------------------------------------------

class TasksView {
  async open() {
    this.timer = setInterval(() => this.refresh(), REFRESH_MS);
    await this.refresh();
  }

  close() { clearInterval(this.timer); }

  async refresh() {
    if (this.busy) return;
    this.busy = true;
    try {
      const q = new URLSearchParams({ limit: '1000' });
      if ($('#f-status').value) q.set('status', $('#f-status').value);
      if ($('#f-since').value) q.set('since', $('#f-since').value);
      const { logs } = await apiJSON(`tasks?${q}`);
      const ft = $('#f-task').value.trim().toLowerCase(), fh = $('#f-host').value.trim().toLowerCase();
      const rows = logs.filter((l) => l.task.toLowerCase().includes(ft) && l.host.toLowerCase().includes(fh));
      // a running log's size is in the spool: ask for its live size (a few at a time)
      await Promise.all(rows.filter((l) => l.status === 'running').slice(0, 20).map(async (l) => {
        try { l.size = (await apiJSON(logPath(l.task, l.host))).live_size; } catch (e) { /* gone meanwhile */ }
      }));
      const hosts = new Map();
      for (const l of logs) hosts.set(l.task, (hosts.get(l.task) || 0) + 1);
      this.render(rows, hosts);
      setText('#tasks-note', `${rows.length} of ${logs.length} logs · refreshed ${fmtTs(Date.now() * 1e6).slice(0, 8)}`);
      clearError();
    } catch (e) {
      showError(`task list: ${e.message}`);
    } finally {
      this.busy = false;
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
      tr.append(status, task, el('td', null, l.host), el('td', null, fmtStart(l.started_ns)),
        el('td', null, fmtDuration(end - l.started_ns / 1e6)), el('td', 'num', fmtBytes(l.size)),
        el('td', `num ${l.exit_code ? 'bad' : ''}`, l.exit_code == null ? '—' : String(l.exit_code)));
      tr.onclick = (e) => { if (e.target.tagName !== 'A') location.hash = href; };
      return tr;
    }));
  }
}

// --- search ---------------------------------------------------------------------------------------------

class SearchView {
  constructor(params) { this.params = params; }

  async open() {
    const q = this.params.get('q') || '';
    $('#q').value = q;
    $('#case').checked = this.params.get('i') === '0';
    const want = new URLSearchParams({ q, i: this.params.get('i') === '0' ? '0' : '1', limit: '200' });
    if (this.params.get('task')) want.set('task', this.params.get('task'));
    setText('#search-note', `searching for “${q}”…`);
    $('#hits').replaceChildren();
    const res = await apiJSON(`search?${want}`);
    setText('#search-note', `${res.hits.length}${res.more ? '+' : ''} line${res.hits.length === 1 ? '' : 's'} with “${q}”`
      + `${want.get('i') === '1' ? ' (any case)' : ''}${want.get('task') ? ` in ${want.get('task')}` : ''} · ${res.elapsed_ms} ms`
      + ' · archived lines only (sealed segments)');
    const needle = want.get('i') === '1' ? q.toLowerCase() : q;
    $('#hits').replaceChildren(...res.hits.map((h) => {
      const li = el('li', `hit ${STREAM_CLASS[h.stream] || 'u'}`);
      const a = el('a', 'where', `${h.task}/${h.host}:${h.line_no}`);
      a.href = `#/t/${encodeURIComponent(h.task)}/${encodeURIComponent(h.host)}?at=${h.offset}&line=${h.line_no}`;
      const line = el('code', 'line');
      const text = stripAnsi(h.line);
      const hay = want.get('i') === '1' ? text.toLowerCase() : text;
      let at = 0;
      for (let i = hay.indexOf(needle); needle && i >= 0; i = hay.indexOf(needle, at)) {
        line.append(text.slice(at, i), el('mark', null, text.slice(i, i + needle.length)));
        at = i + needle.length;
      }
      line.append(text.slice(at));
      li.append(a, el('span', 'when', h.ts ? h.ts.replace('T', ' ').slice(0, 23) : ''), el('span', 'stream', h.stream), line);
      return li;
    }));
  }

  close() {}
}

// --- the page: routes, controls ---------------------------------------------------------------------------

let view = null;

function setText(sel, text) { $(sel).textContent = text; }

function showError(msg) {
  let bar = $('#error');
  if (!bar) { bar = el('div'); bar.id = 'error'; document.body.append(bar); bar.onclick = clearError; }
  bar.textContent = msg;
  bar.hidden = false;
}

function clearError() { const bar = $('#error'); if (bar) bar.hidden = true; }

function crumbs(parts) {
  $('#crumbs').replaceChildren(...parts.flatMap(([text, href], i) => {
    const a = el(href ? 'a' : 'span', null, text);
    if (href) a.href = href;
    return i ? [el('span', 'slash', '/'), a] : [a];
  }));
}

function show(section) {
  for (const id of ['tasks-view', 'log-view', 'search-view']) $(`#${id}`).hidden = id !== section;
}

async function route() {
  if (view) view.close();
  view = null;
  clearError();
  const [path, query] = location.hash.replace(/^#/, '').split('?');
  const params = new URLSearchParams(query || '');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  $('#scope-label').hidden = true;
  try {
    if (parts[0] === 't' && parts.length >= 2) {
      const [, task, host] = parts;
      show('log-view');
      $('#scope-label').hidden = false;
      $('#host-filter').replaceChildren();
      crumbs([['tasks', '#/'], [task, `#/t/${encodeURIComponent(task)}`], ...(host ? [[host, null]] : [['all hosts', null]])]);
      document.title = `${task}${host ? '/' + host : ''} · logship`;
      const at = params.has('at') ? parseInt(params.get('at'), 10) : null;
      view = host ? new LogView(task, host, at) : new MultiView(task);
      $('#log').classList.toggle('multi', !host);
      $('#pause').textContent = 'Pause';
      $('#pause').setAttribute('aria-pressed', 'false');
      const links = view.downloads();
      for (const [i, id] of ['#dl-all', '#dl-out', '#dl-err'].entries()) {
        const a = $(id);
        a.hidden = !links[i];
        if (links[i]) { a.href = auth.url(links[i][0]); a.download = links[i][1]; }
      }
      await view.open();
    } else if (parts[0] === 'search') {
      show('search-view');
      crumbs([['tasks', '#/'], ['search', null]]);
      document.title = 'search · logship';
      view = new SearchView(params);
      await view.open();
    } else {
      show('tasks-view');
      crumbs([['tasks', null]]);
      document.title = 'logship';
      view = new TasksView();
      await view.open();
    }
  } catch (e) {
    showError(e.message);
  }
}

function applyToggles() {
  const log = $('#log');
  log.classList.toggle('hide-o', !$('#show-out').checked);
  log.classList.toggle('hide-e', !$('#show-err').checked);
  log.classList.toggle('show-t', $('#show-ts').checked);
  log.classList.toggle('hide-n', !$('#show-n').checked);
  log.classList.toggle('wrap', $('#wrap').checked);
  for (const id of ['show-out', 'show-err', 'show-ts', 'show-n', 'wrap']) localStorage.setItem(`logship.${id}`, $(`#${id}`).checked ? '1' : '0');
}

function setup() {
  const qs = new URLSearchParams(location.search);
  if (qs.get('token')) { // keep it, and take it out of the address bar
    auth.token = qs.get('token');
    history.replaceState(null, '', location.pathname + location.hash);
  }
  for (const id of ['show-out', 'show-err', 'show-ts', 'show-n', 'wrap']) {
    const saved = localStorage.getItem(`logship.${id}`);
    if (saved != null) $(`#${id}`).checked = saved === '1';
    $(`#${id}`).onchange = applyToggles;
  }
  applyToggles();
  $('#token-form').onsubmit = () => { auth.token = $('#token').value.trim(); setTimeout(route); };
  $('#search').onsubmit = (e) => {
    e.preventDefault();
    const q = $('#q').value;
    if (!q) return;
    const p = new URLSearchParams({ q, i: $('#case').checked ? '0' : '1' });
    if (view && view.task && $('#scope').checked && !$('#scope-label').hidden) p.set('task', view.task);
    location.hash = `#/search?${p}`;
  };
  for (const id of ['f-status', 'f-since', 'f-task', 'f-host']) {
    $(`#${id}`).addEventListener('input', () => view instanceof TasksView && view.refresh());
  }
  $('#filters').onsubmit = (e) => e.preventDefault();
  $('#pause').onclick = () => {
    if (!view || !view.pause) return;
    const on = !view.paused;
    view.pause(on);
    $('#pause').textContent = on ? 'Resume' : 'Pause';
    $('#pause').setAttribute('aria-pressed', String(on));
  };
  $('#follow').onclick = () => {
    if (!view || !view.setFollowing) return;
    if (view.following) view.setFollowing(false); else view.jumpBottom();
  };
  $('#top').onclick = () => view && view.jumpTop && view.jumpTop();
  $('#bottom').onclick = () => view && view.jumpBottom && view.jumpBottom();
  $('#top-edge').onclick = () => view && view.loadEarlier && view.loadEarlier();
  $('#bottom-edge').onclick = () => view && view.loadLater && view.loadLater();
  $('#new-lines').onclick = () => view && view.jumpBottom && view.jumpBottom();
  $('#log').addEventListener('scroll', () => view && view.onScroll && view.onScroll(), { passive: true });
  document.addEventListener('keydown', (e) => {
    if (!view || !view.jumpTop || e.target.closest('input, select, textarea, dialog')) return;
    if (e.key === 'Home') { e.preventDefault(); view.jumpTop(); }
    if (e.key === 'End') { e.preventDefault(); view.jumpBottom(); }
  });
  window.addEventListener('hashchange', route);
  route();
}

setup();

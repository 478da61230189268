// Finding and making elements, the error bar, and formatting of sizes, durations and times.

export const $ = (sel) => document.querySelector(sel);

// A key pressed where it types or picks (a text field, a menu, the token dialog) is not the log view's. A toolbar
// checkbox just clicked keeps the focus, and does nothing with Home, End, PageUp or the arrows: those are the log's.
export const typing = (e) => !!e.target.closest('input:not([type=checkbox]), select, textarea, dialog');

export function fmtBytes(n) {
  if (n == null) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(n < 10 ? 1 : 0) : n} ${units[i]}`;
}

export function fmtDuration(ms) {
  if (ms == null || ms < 0) return '—';
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${(ms / 1000).toFixed(1)} s`;
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h} h ${m} min` : `${m} min ${s % 60} s`;
}

export const pad = (n, w = 2) => String(n).padStart(w, '0');

// Times show the date and the time of day, in UTC or in the browser's zone: a toggle (#tz), kept in
// localStorage. Each shown time keeps its instant in data-ts, so a change of zone rewrites them in place.
const TZ_KEY = 'logship.tz';
let utc = localStorage.getItem(TZ_KEY) === 'utc';

export const clock = {
  get utc() { return utc; },
  set utc(on) { utc = on; localStorage.setItem(TZ_KEY, on ? 'utc' : 'local'); retime(); },
  // 'UTC', or the browser's offset from it now, e.g. 'UTC+05:30'
  zone(asUtc = utc) {
    if (asUtc) return 'UTC';
    const off = -new Date().getTimezoneOffset(), a = Math.abs(off);
    return `UTC${off < 0 ? '-' : '+'}${pad(Math.floor(a / 60))}:${pad(a % 60)}`;
  },
};

// 2025-07-07 17:47:01.123 (without .123 when ms is false), in the zone chosen
export function fmtTime(ns, ms = true) {
  const d = new Date(ns / 1e6);
  const f = utc ? [d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate(), d.getUTCHours(), d.getUTCMinutes(), d.getUTCSeconds()]
    : [d.getFullYear(), d.getMonth(), d.getDate(), d.getHours(), d.getMinutes(), d.getSeconds()];
  return `${f[0]}-${pad(f[1] + 1)}-${pad(f[2])} ${pad(f[3])}:${pad(f[4])}:${pad(f[5])}`
    + (ms ? `.${pad(d.getMilliseconds(), 3)}` : '');
}

// An element showing the instant `ns` (a number of ns since the epoch), kept in step with the zone chosen.
export function timeEl(tag, cls, ns, ms = true) {
  const e = el(tag, cls);
  if (ns == null) return e;
  e.dataset.ts = String(ns);
  if (!ms) e.dataset.s = '';
  setTime(e);
  return e;
}

function setTime(e) {
  const ns = Number(e.dataset.ts), ms = e.dataset.s === undefined;
  e.textContent = fmtTime(ns, ms);
  e.title = new Date(ns / 1e6).toISOString().replace('T', ' ').replace('Z', ' UTC'); // the instant, unambiguous
}

export function retime(root = document) {
  for (const e of root.querySelectorAll('[data-ts]')) setTime(e);
  for (const e of root.querySelectorAll('.zone')) e.textContent = clock.zone();
}

export function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

export function setText(sel, text) { $(sel).textContent = text; }

export function showError(msg) {
  let bar = $('#error');
  if (!bar) { bar = el('div'); bar.id = 'error'; document.body.append(bar); bar.onclick = clearError; }
  bar.textContent = msg;
  bar.hidden = false;
}

export function clearError() { const bar = $('#error'); if (bar) bar.hidden = true; }

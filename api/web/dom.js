// Finding and making elements, the error bar, and formatting of sizes, durations and times.

export const $ = (sel) => document.querySelector(sel);

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

export function fmtStart(ns) {
  const d = new Date(ns / 1e6);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function fmtTs(ns) {
  const d = new Date(ns / 1e6);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
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

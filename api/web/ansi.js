// ANSI escape sequences: colours and styles (SGR) become spans; other sequences are left out.

import { el } from './dom.js';

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
export function terminalText(text) {
  text = text.replace(/\r+$/, '');
  if (text.includes('\r')) {
    const parts = text.split('\r').filter((x) => x !== '');
    text = parts.length ? parts[parts.length - 1] : '';
  }
  return text;
}

export function renderAnsi(text, into) {
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

export const stripAnsi = (text) => text.replace(ESC_RE, '');

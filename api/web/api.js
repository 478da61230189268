// The API: the token (a header on fetch; ?token= where no header can go), errors as ApiError, URLs.

import { $ } from './dom.js';

export const API = 'api/v1/';
const TOKEN_KEY = 'logship.token';

export const auth = {
  get token() { return localStorage.getItem(TOKEN_KEY) || ''; },
  set token(t) { if (t) localStorage.setItem(TOKEN_KEY, t); else localStorage.removeItem(TOKEN_KEY); },
  headers(extra = {}) { return this.token ? { ...extra, Authorization: `Bearer ${this.token}` } : extra; },
  // WebSockets and download links cannot carry a header: the API also takes ?token=
  url(u) {
    if (!this.token) return u;
    return u + (u.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(this.token);
  },
};

export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.detail ? `${body.detail}${body.hint ? ' — ' + body.hint : ''}` : `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

export async function api(path, opts = {}) {
  const r = await fetch(API + path, { ...opts, headers: auth.headers(opts.headers || {}) });
  if (r.status === 401) askToken();
  if (!r.ok) {
    let body = null;
    try { body = await r.json(); } catch (e) { /* not JSON */ }
    throw new ApiError(r.status, body);
  }
  return r;
}

export const apiJSON = async (path, opts) => (await api(path, opts)).json();

// A fetch given up because its view closed (AbortController): not an error to show.
export const aborted = (e) => e && e.name === 'AbortError';
export const logPath = (task, host) => `tasks/${encodeURIComponent(task)}/hosts/${encodeURIComponent(host)}`;

export function wsURL(path) {
  const u = new URL(API + path, location.href);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  return auth.url(u.toString());
}

export function askToken() {
  const d = $('#token-dialog');
  if (!d.open) d.showModal();
}

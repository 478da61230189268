// Search over archived lines (GET /api/v1/search); each hit links to its log at its line.

import { apiJSON } from './api.js';
import { stripAnsi } from './ansi.js';
import { $, el, setText, timeEl } from './dom.js';
import { STREAM_CLASS } from './lines.js';

export class SearchView {
  constructor(params) {
    this.params = params;
    this.ctl = new AbortController(); // close() aborts the search
  }

  async open() {
    const q = this.params.get('q') || '';
    $('#q').value = q;
    $('#case').checked = this.params.get('i') === '0';
    const want = new URLSearchParams({ q, i: this.params.get('i') === '0' ? '0' : '1', limit: '200' });
    if (this.params.get('task')) want.set('task', this.params.get('task'));
    setText('#search-note', `searching for “${q}”…`);
    $('#hits').replaceChildren();
    const res = await apiJSON(`search?${want}`, { signal: this.ctl.signal });
    if (this.closed) return; // another search or view took over
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
      li.append(a, timeEl('span', 'when', isoNs(h.ts)), el('span', 'stream', h.stream), line);
      return li;
    }));
  }

  close() {
    this.closed = true;
    this.ctl.abort();
    $('#hits').replaceChildren();
  }
}

// '2025-07-07T17:47:01.123456Z' (the API's hit time, UTC) as ns since the epoch, to ms; null if absent
function isoNs(ts) {
  const m = ts && /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z$/.exec(ts);
  return m ? (Date.parse(`${m[1]}Z`) + Math.floor(Number(m[2] || 0) * 1000)) * 1e6 : null;
}

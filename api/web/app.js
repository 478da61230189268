// The logship web page: the task list, a live log view, search and downloads. Plain JS modules, no
// build step; each view is a class with open() and close(), chosen by the address's #fragment. Every
// navigation makes a new view and closes the last one completely first, so no view inherits another's
// rows, position, fetches or timers.

import { aborted, auth } from './api.js';
import { $, clearError, clock, el, retime, showError, typing } from './dom.js';
import { LogView } from './logview.js';
import { MultiView } from './multiview.js';
import { SearchView } from './search.js';
import { TasksView } from './tasks.js';

let view = null;

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
  let mine = null;
  try {
    if (parts[0] === 't' && parts.length >= 2) {
      const [, task, host] = parts;
      show('log-view');
      $('#scope-label').hidden = false;
      const at = params.has('at') ? parseInt(params.get('at'), 10) : null;
      const logHref = (t, h) => `#/t/${encodeURIComponent(t)}${h ? '/' + encodeURIComponent(h) : ''}`;
      // at a search hit, the host links to its log plainly (opened at the end)
      const last = [host || 'all hosts', host && at != null ? logHref(task, host) : null];
      crumbs([['tasks', '#/'], [task, logHref(task)], last]);
      document.title = `${task}${host ? '/' + host : ''} · logship`;
      view = mine = host ? new LogView(task, host, at) : new MultiView(task);
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
      view = mine = new SearchView(params);
      await view.open();
    } else {
      show('tasks-view');
      crumbs([['tasks', null]]);
      document.title = 'logship';
      view = mine = new TasksView();
      await view.open();
    }
  } catch (e) {
    if (mine === view && !aborted(e)) showError(e.message); // not a view already left
  }
}

function applyToggles() {
  const log = $('#log-view'); // on the section: each view's own #log inherits them
  log.classList.toggle('hide-o', !$('#show-out').checked);
  log.classList.toggle('hide-e', !$('#show-err').checked);
  log.classList.toggle('show-t', $('#show-ts').checked);
  log.classList.toggle('hide-n', !$('#show-n').checked);
  log.classList.toggle('wrap', $('#wrap').checked);
  for (const id of ['show-out', 'show-err', 'show-ts', 'show-n', 'wrap']) localStorage.setItem(`logship.${id}`, $(`#${id}`).checked ? '1' : '0');
  if (view && view.following && view.scrollBottom) view.scrollBottom(); // fewer rows shown: stay at the end
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
  $('#tz').value = clock.utc ? 'utc' : 'local';
  $('#tz').onchange = () => { clock.utc = $('#tz').value === 'utc'; };
  $('#tz-local').textContent = `local time (${clock.zone(false)})`;
  retime();
  $('#token-form').onsubmit = () => { auth.token = $('#token').value.trim(); setTimeout(route); };
  $('#search').onsubmit = (e) => {
    e.preventDefault();
    const q = $('#q').value;
    if (!q) return;
    const p = new URLSearchParams({ q, i: $('#case').checked ? '0' : '1' });
    if (view && view.task && $('#scope').checked && !$('#scope-label').hidden) p.set('task', view.task);
    location.hash = `#/search?${p}`;
  };
  for (const id of ['f-status', 'f-since', 'f-silent', 'f-task', 'f-host']) {
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
  $('#new-lines').onclick = () => view && view.jumpBottom && view.jumpBottom();
  document.addEventListener('keydown', (e) => {
    if (!view || !view.jumpTop || typing(e)) return;
    if (e.key === 'Home') { e.preventDefault(); view.jumpTop(); }
    if (e.key === 'End') { e.preventDefault(); view.jumpBottom(); }
  });
  window.addEventListener('hashchange', route);
  route();
}

setup();

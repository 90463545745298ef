// orch web UI: one file, no framework, no modules.
// Every string from the server is untrusted: the DOM is built only with createElement,
// textContent and attribute values (never innerHTML), and CSS comes only from app.css
// (the CSP forbids inline styles; CSSOM property writes like el.style.height are fine).
'use strict';

(() => {
  const SVGNS = 'http://www.w3.org/2000/svg';
  const enc = encodeURIComponent;
  const app = document.getElementById('app');

  // ------------------------------------------------------------------ DOM helpers

  // h('a', {href, class, text, onclick}, ...children): children may be strings, nodes,
  // arrays or null/false (skipped).
  function h(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    setAttrs(e, attrs);
    addKids(e, kids);
    return e;
  }
  // Same for SVG elements (attributes only via setAttribute; className is read-only there).
  function s(tag, attrs, ...kids) {
    const e = document.createElementNS(SVGNS, tag);
    setAttrs(e, attrs);
    addKids(e, kids);
    return e;
  }
  function setAttrs(e, attrs) {
    if (!attrs) return;
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'text') e.textContent = String(v);
      else if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
      else if (k === 'style') throw new Error('inline styles are not allowed (CSP)');
      else e.setAttribute(k, v === true ? '' : String(v));
    }
  }
  function addKids(e, kids) {
    for (const k of kids) {
      if (k === null || k === undefined || k === false) continue;
      if (Array.isArray(k)) addKids(e, k);
      else if (k instanceof Node) e.appendChild(k);
      else e.appendChild(document.createTextNode(String(k)));
    }
  }
  // A class name for a state; the state text is untrusted, so keep only safe characters.
  function cls(state) {
    return 'state-' + (String(state || 'none').replace(/[^A-Za-z0-9_-]/g, '') || 'none');
  }
  function badge(state) {
    return h('span', { class: 'badge ' + cls(state), 'data-state': state || 'none' }, state || 'none');
  }
  function table(headers, rows, className) {
    return h('table', { class: 'data ' + (className || '') },
      h('thead', null, h('tr', null, headers.map((t) => h('th', null, t)))),
      h('tbody', null, rows));
  }
  function errorBox(msg) {
    return h('div', { class: 'error', role: 'alert' }, msg);
  }
  function errMsg(e) {
    if (e instanceof ApiError) return (e.data && e.data.error) || `HTTP ${e.status}`;
    return String((e && e.message) || e);
  }
  // Put an error (or nothing) into a slot element.
  function setError(slot, e) {
    if (e) slot.replaceChildren(errorBox(errMsg(e)));
    else slot.replaceChildren();
  }

  // ------------------------------------------------------------------ formatting

  // Date.parse only promises millisecond precision; the server sends microseconds.
  function parseTime(t) {
    if (typeof t === 'number') return t;
    if (!t) return NaN;
    return Date.parse(String(t).replace(/(\.\d{3})\d+/, '$1'));
  }
  // Accepts an RFC 3339 string or epoch milliseconds.
  function fmtTime(t) {
    const ms = parseTime(t);
    if (Number.isNaN(ms)) return t ? String(t) : '—';
    return new Date(ms).toISOString().slice(0, 19).replace('T', ' ');
  }
  function fmtClock(ms) {
    return new Date(ms).toISOString().slice(11, 19);
  }
  function fmtDur(ms) {
    if (ms === null || ms === undefined || Number.isNaN(ms)) return '—';
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
    const totalS = Math.round(ms / 1000);
    if (totalS < 3600) return `${Math.floor(totalS / 60)}m ${totalS % 60}s`;
    const m = Math.floor(totalS / 60);
    return `${Math.floor(m / 60)}h ${m % 60}m`;
  }
  function fmtBytes(b) {
    if (b === null || b === undefined) return '—';
    if (b < 1024) return `${b} B`;
    if (b < 1048576) return `${(b / 1024).toFixed(1)} KiB`;
    if (b < 1073741824) return `${(b / 1048576).toFixed(1)} MiB`;
    return `${(b / 1073741824).toFixed(2)} GiB`;
  }
  function fmtNum(v, digits) {
    if (v === null || v === undefined || v === '') return '—';
    const n = Number(v);
    if (!Number.isFinite(n)) return String(v);
    return digits === undefined ? n.toLocaleString('en-US') : n.toFixed(digits);
  }
  // Round an axis maximum up to 1, 2, 2.5 or 5 times a power of ten.
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }
  function trimNum(n) {
    return String(+n.toPrecision(4));
  }

  // ------------------------------------------------------------------ API

  class ApiError extends Error {
    constructor(status, data) {
      super((data && data.error) || `HTTP ${status}`);
      this.status = status;
      this.data = data || {};
    }
  }

  function csrfToken() {
    for (const part of document.cookie.split(';')) {
      const i = part.indexOf('=');
      if (i > 0 && part.slice(0, i).trim() === 'orch_csrf') return safeDecode(part.slice(i + 1).trim());
    }
    return '';
  }

  let leaving = false;
  function toLogin() {
    if (leaving) return;
    leaving = true;
    location.href = '/login?next=' + enc(location.pathname);
  }

  // GET (default) or POST JSON; resolves with the parsed body, rejects with ApiError.
  async function api(path, opts = {}) {
    const method = opts.method || 'GET';
    const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
    if (method !== 'GET') {
      init.headers['Content-Type'] = 'application/json';
      init.headers['X-CSRF-Token'] = csrfToken();
      init.body = JSON.stringify(opts.body === undefined ? {} : opts.body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, { error: 'Network error: ' + errMsg(e) });
    }
    if (res.status === 401) {
      toLogin();
      throw new ApiError(401, { error: 'Not signed in' });
    }
    const text = await res.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = { error: text.slice(0, 500) || res.statusText };
    }
    if (!res.ok) {
      throw new ApiError(res.status, data && typeof data === 'object' ? data : { error: String(data) });
    }
    return data;
  }
  const post = (path, body) => api(path, { method: 'POST', body });

  // ------------------------------------------------------------------ pages and routing

  // One Page per rendered view. Its timers and cleanups die with it, so navigating
  // away never leaves pollers or EventSources running.
  class Page {
    constructor() {
      this.alive = true;
      this.timers = new Set();
      this.cleanups = [];
    }
    later(ms, fn) {
      if (!this.alive) return null;
      const id = setTimeout(() => {
        this.timers.delete(id);
        if (this.alive) fn();
      }, ms);
      this.timers.add(id);
      return id;
    }
    cancel(id) {
      clearTimeout(id);
      this.timers.delete(id);
    }
    onCleanup(fn) {
      this.cleanups.push(fn);
    }
    // Run fn now and again `ms` after each completion (no overlap when the server is slow).
    // fn returning false stops the loop; kick() runs it at once (e.g. after a user action)
    // and restarts a stopped loop.
    poll(ms, fn) {
      let timer = null;
      let running = false;
      let pending = false;
      const tick = async () => {
        timer = null;
        if (!this.alive) return;
        if (running) { pending = true; return; }
        running = true;
        let again = true;
        try {
          again = (await fn()) !== false;
        } catch (e) {
          console.error(e);
        }
        running = false;
        if (!this.alive) return;
        if (pending) { pending = false; tick(); return; }
        if (again) timer = this.later(ms, tick);
      };
      tick();
      return {
        kick: () => {
          if (timer) { this.cancel(timer); timer = null; }
          tick();
        },
      };
    }
    destroy() {
      this.alive = false;
      for (const t of this.timers) clearTimeout(t);
      this.timers.clear();
      for (const f of this.cleanups) {
        try { f(); } catch (_) { /* ignore */ }
      }
    }
  }

  let current = null;

  function safeDecode(seg) {
    try { return decodeURIComponent(seg); } catch (_) { return seg; }
  }

  function route() {
    if (current) current.destroy();
    const page = (current = new Page());
    const root = h('div', { class: 'page' });
    app.replaceChildren(root);
    const seg = location.pathname.split('/').filter(Boolean).map(safeDecode);
    markNav(seg[0]);
    document.title = 'orch';

    let handler = notFoundPage;
    let args = [];
    const n = seg.length;
    if (n === 0) handler = dagListPage;
    else if (seg[0] === 'dags' && n === 2) { handler = dagPage; args = [seg[1]]; }
    else if (seg[0] === 'dags' && n === 3 && seg[2] === 'trigger') { handler = triggerPage; args = [seg[1]]; }
    else if (seg[0] === 'runs' && n === 2) { handler = runPage; args = [seg[1]]; }
    else if (seg[0] === 'runs' && n === 6 && seg[2] === 'tasks' && seg[4] === 'attempts' && /^\d+$/.test(seg[5])) {
      handler = logPage; args = [seg[1], seg[3], Number(seg[5])];
    }
    else if (seg[0] === 'streams' && n === 1) handler = streamsPage;
    else if (seg[0] === 'data' && n === 1) handler = dataPage;

    Promise.resolve()
      .then(() => handler(root, page, ...args))
      .catch((e) => { if (page.alive) root.append(errorBox(errMsg(e))); });
  }

  function navigate(path, replace) {
    if (replace) history.replaceState(null, '', path);
    else history.pushState(null, '', path);
    route();
    window.scrollTo(0, 0);
  }

  function markNav(first) {
    const section = first === 'streams' ? 'streams' : first === 'data' ? 'data' : 'dags';
    for (const a of document.querySelectorAll('.mainnav a')) {
      a.classList.toggle('active', a.dataset.section === section);
    }
  }

  // Intercept clicks on internal links (HTML and SVG <a>) and route client-side.
  // Server-rendered paths (/login, /logout) and the API/assets are left to the browser.
  document.addEventListener('click', (ev) => {
    if (ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
    const a = ev.target.closest && ev.target.closest('a');
    if (!a) return;
    const raw = a.getAttribute('href');
    if (!raw || a.hasAttribute('download') || (a.getAttribute('target') || '_self') !== '_self') return;
    let url;
    try { url = new URL(raw, location.href); } catch (_) { return; }
    if (url.origin !== location.origin) return;
    if (/^\/(api|assets|login|logout)(\/|$)/.test(url.pathname)) return;
    ev.preventDefault();
    navigate(url.pathname + url.search);
  });
  window.addEventListener('popstate', route);

  // ------------------------------------------------------------------ header: session

  async function loadSession() {
    const slot = document.getElementById('session');
    if (!slot) return;
    let sess;
    try {
      sess = await api('/api/v1/session');
    } catch (_) {
      return; // 401 already redirected; anything else: just no user shown
    }
    if (!sess || !sess.user) return;
    if (sess.auth === 'none') {
      // Loopback without a token: nobody signs in or out.
      slot.replaceChildren(h('span', { id: 'user' }, sess.user));
      return;
    }
    const btn = h('button', { type: 'button', class: 'signout', 'data-action': 'signout' }, 'Sign out');
    btn.addEventListener('click', async () => {
      btn.disabled = true;
      try {
        await fetch('/logout', {
          method: 'POST',
          credentials: 'same-origin',
          headers: { 'X-CSRF-Token': csrfToken(), 'Content-Type': 'application/json' },
          body: '{}',
        });
      } catch (_) { /* go to the login page anyway */ }
      location.href = '/login';
    });
    slot.replaceChildren(h('span', { class: 'user', id: 'user' }, sess.user), btn);
  }

  // A param's type and rules as a short hint: "integer, 1..1000, required".
  function paramRules(p) {
    const parts = [p.type];
    if (p.min !== undefined || p.max !== undefined) parts.push(`${p.min ?? ''}..${p.max ?? ''}`);
    if (p.pattern) parts.push(`/${p.pattern}/`);
    if (p.required) parts.push('required');
    return parts.join(', ');
  }

  // ------------------------------------------------------------------ shared bits

  const runHref = (runId) => `/runs/${enc(runId)}`;
  const dagHref = (dagId) => `/dags/${enc(dagId)}`;
  const attemptHref = (runId, taskId, n) => `/runs/${enc(runId)}/tasks/${enc(taskId)}/attempts/${n}`;

  function pauseButton(paused) {
    return h('button', {
      type: 'button', 'data-action': 'pause', 'data-paused': String(!!paused),
      class: 'toggle ' + (paused ? 'off' : 'on'),
      title: paused ? 'Paused: no scheduled runs. Click to unpause.' : 'Active. Click to pause scheduling.',
    }, paused ? 'Unpause' : 'Pause');
  }

  // POST pause/unpause depending on the button's current state; resolves with the new state.
  async function togglePause(dagId, btn) {
    const paused = btn.dataset.paused === 'true';
    btn.disabled = true;
    try {
      const r = await post(`/api/v1/dags/${enc(dagId)}/${paused ? 'unpause' : 'pause'}`, {});
      return r && typeof r.paused === 'boolean' ? r.paused : !paused;
    } finally {
      btn.disabled = false;
    }
  }

  // ------------------------------------------------------------------ / : DAG list

  async function dagListPage(root, page) {
    document.title = 'orch – DAGs';
    const errs = h('div');
    const importSlot = h('div');
    const tbody = h('tbody');
    root.append(
      h('h1', null, 'DAGs'), errs, importSlot,
      h('table', { class: 'data dags' },
        h('thead', null, h('tr', null,
          ['DAG', 'Description', 'Schedule', 'Next run', 'Recent runs', 'Tasks', '', ''].map((t) => h('th', null, t)))),
        tbody));

    let last = '';
    const poller = page.poll(2000, async () => {
      try {
        const d = await api('/api/v1/dags');
        setError(errs, null);
        const str = JSON.stringify(d);
        if (str === last) return;
        last = str;
        renderImportErrors(importSlot, d.import_errors || []);
        const dags = d.dags || [];
        tbody.replaceChildren(...dags.map(dagRow));
        if (!dags.length) tbody.append(h('tr', null, h('td', { colspan: 8, class: 'empty' }, 'No DAGs loaded.')));
      } catch (e) {
        setError(errs, e);
      }
    });

    // Delegated: the rows are replaced on every refresh.
    tbody.addEventListener('click', async (ev) => {
      const btn = ev.target.closest('button[data-action="pause"]');
      if (!btn) return;
      const tr = btn.closest('tr');
      try {
        await togglePause(tr.dataset.dag, btn);
        setError(errs, null);
      } catch (e) {
        setError(errs, e);
      }
      poller.kick();
    });
  }

  function renderImportErrors(slot, errors) {
    if (!errors.length) { slot.replaceChildren(); return; }
    slot.replaceChildren(h('div', { class: 'import-errors', role: 'alert' },
      h('h2', null, `Import errors (${errors.length})`),
      h('ul', null, errors.map((e) => {
        let where = String(e.file || '?');
        if (e.line !== null && e.line !== undefined) {
          where += ':' + e.line;
          if (e.column !== null && e.column !== undefined) where += ':' + e.column;
        }
        return h('li', { class: 'import-error', 'data-file': e.file || '' }, `${where}: ${e.message}`);
      }))));
  }

  function dagRow(d) {
    const runs = d.recent_runs || [];
    return h('tr', { 'data-dag': d.dag_id, class: d.paused ? 'paused' : null },
      h('td', { class: 'nowrap' }, h('a', { href: dagHref(d.dag_id), class: 'dag-link' }, d.dag_id)),
      h('td', { class: 'muted' }, d.description || ''),
      h('td', { class: 'nowrap' }, d.schedule ? h('code', null, d.schedule) : h('span', { class: 'muted' }, 'manual'),
        d.timezone && d.timezone !== 'UTC' ? h('span', { class: 'muted' }, ' ' + d.timezone) : null),
      h('td', { class: 'time' }, d.paused ? h('span', { class: 'muted' }, 'paused') : fmtTime(d.next_run)),
      // Newest first, as the API returns them.
      h('td', { class: 'recent' }, runs.length ? runs.map((r) => h('a', {
        class: 'sq ' + cls(r.state), href: runHref(r.run_id), 'data-run': r.run_id, 'data-state': r.state,
        title: `${r.state} · ${fmtTime(r.logical_date)} · ${r.run_type}`,
      })) : h('span', { class: 'muted' }, 'no runs')),
      h('td', { class: 'num' }, d.task_count),
      h('td', null, pauseButton(d.paused)),
      h('td', null, h('a', { class: 'btn', 'data-action': 'trigger', href: `${dagHref(d.dag_id)}/trigger` }, 'Trigger')));
  }

  // ------------------------------------------------------------------ /dags/ID : DAG page

  async function dagPage(root, page, dagId) {
    document.title = `orch – ${dagId}`;
    const errs = h('div');
    root.append(errs);
    const dag = await api(`/api/v1/dags/${enc(dagId)}`);
    if (!page.alive) return;

    const pauseBtn = pauseButton(dag.paused);
    const pausedBadge = h('span', { class: 'badge state-paused' }, 'paused');
    pausedBadge.hidden = !dag.paused;
    pauseBtn.addEventListener('click', async () => {
      try {
        const paused = await togglePause(dag.dag_id, pauseBtn);
        const fresh = pauseButton(paused);
        pauseBtn.dataset.paused = fresh.dataset.paused;
        pauseBtn.className = fresh.className;
        pauseBtn.title = fresh.title;
        pauseBtn.textContent = fresh.textContent;
        pausedBadge.hidden = !paused;
        setError(errs, null);
      } catch (e) {
        setError(errs, e);
      }
    });

    const gridWrap = h('div', { class: 'grid-wrap' });
    const graph = buildGraph(dag.tasks || []);
    const durWrap = h('div', { class: 'chart-wrap durations' });

    root.append(
      h('h1', null, h('span', { class: 'dag-id' }, dag.dag_id), pausedBadge),
      dag.description ? h('p', { class: 'muted' }, dag.description) : null,
      h('div', { class: 'actions' }, pauseBtn,
        h('a', { class: 'btn primary', 'data-action': 'trigger', href: `${dagHref(dag.dag_id)}/trigger` }, 'Trigger')),
      h('dl', { class: 'info' },
        h('dt', null, 'Schedule'), h('dd', null, dag.schedule ? h('code', null, dag.schedule) : 'manual only'),
        h('dt', null, 'Timezone'), h('dd', null, dag.timezone || 'UTC'),
        h('dt', null, 'Next run'), h('dd', null, dag.paused ? 'paused' : fmtTime(dag.next_run)),
        h('dt', null, 'File'), h('dd', null, h('code', null, dag.file || ''))),
      h('h2', null, 'Grid'), legend(), gridWrap,
      h('h2', null, 'Graph'), h('div', { class: 'chart-wrap graph' }, graph.svg),
      h('h2', null, 'Durations'), durWrap,
      h('h2', null, 'Source'), h('pre', { class: 'source' }, dag.source || ''));

    // A cell opens its attempt's log; a cell without an attempt opens the run.
    gridWrap.addEventListener('click', (ev) => {
      const td = ev.target.closest('td.cell');
      if (!td) return;
      const n = Number(td.dataset.try || 0);
      navigate(n > 0 ? attemptHref(td.dataset.run, td.dataset.task, n) : runHref(td.dataset.run));
    });

    let last = '';
    page.poll(1000, async () => {
      try {
        const grid = await api(`/api/v1/dags/${enc(dagId)}/grid?runs=25`);
        setError(errs, null);
        const str = JSON.stringify(grid);
        if (str === last) return;
        last = str;
        const runs = grid.runs || [];
        gridWrap.replaceChildren(runs.length ? renderGrid(grid) : h('p', { class: 'empty' }, 'No runs yet.'));
        const latest = runs[runs.length - 1];
        graph.setStates(latest ? latest.tasks || {} : {});
        durWrap.replaceChildren(runs.length ? durationChart(runs) : h('p', { class: 'empty' }, 'No runs yet.'));
      } catch (e) {
        setError(errs, e);
      }
    });
  }

  function legend() {
    const states = ['success', 'failed', 'running', 'queued', 'scheduled', 'up_for_retry', 'upstream_failed', 'skipped'];
    return h('div', { class: 'legend' },
      states.map((st) => h('span', null, h('i', { class: 'sq ' + cls(st) }), st)));
  }

  function renderGrid(grid) {
    const runs = grid.runs || [];
    const tasks = grid.tasks || [];
    const maxDur = Math.max(1, ...runs.map((r) => r.duration_ms || 0));
    const head = h('tr', null, h('th', { class: 'task-id' }, 'Task'), runs.map((r) => {
      const bar = h('a', {
        class: 'run-bar ' + cls(r.state), href: runHref(r.run_id), 'data-run': r.run_id, 'data-state': r.state,
        title: `${fmtTime(r.logical_date)}\n${r.state} · ${r.run_type} · ${fmtDur(r.duration_ms)}`,
      });
      // Bar height ~ duration, like Airflow's grid header.
      bar.style.height = `${Math.round(4 + 28 * ((r.duration_ms || 0) / maxDur))}px`;
      return h('th', { class: 'run-head' }, bar);
    }));
    const body = tasks.map((t) => h('tr', { 'data-task': t },
      h('td', { class: 'task-id', title: t }, t),
      runs.map((r) => {
        const ti = r.tasks ? r.tasks[t] : null;
        const st = ti ? ti.state : 'none';
        return h('td', {
          class: 'cell ' + cls(st), 'data-run': r.run_id, 'data-task': t, 'data-state': st,
          'data-try': ti ? ti.try_number : 0,
          title: `${t}: ${st}${ti ? ` (try ${ti.try_number})` : ''}\n${fmtTime(r.logical_date)}`,
        });
      })));
    return h('table', { class: 'grid' }, h('thead', null, head), h('tbody', null, body));
  }

  // Layered left-to-right DAG drawing: layer = longest path from a root; within a layer
  // nodes are ordered by the mean position of their parents to limit crossings.
  function buildGraph(tasks) {
    const byId = new Map(tasks.map((t) => [t.task_id, t]));
    const deps = (id) => (byId.get(id).depends_on || []).filter((p) => byId.has(p));
    const layerOf = new Map();
    const visiting = new Set();
    const depth = (id) => {
      if (layerOf.has(id)) return layerOf.get(id);
      if (visiting.has(id)) return 0; // cycle guard; the server should have rejected it
      visiting.add(id);
      let d = 0;
      for (const p of deps(id)) d = Math.max(d, depth(p) + 1);
      visiting.delete(id);
      layerOf.set(id, d);
      return d;
    };
    const layers = [];
    for (const t of tasks) (layers[depth(t.task_id)] = layers[depth(t.task_id)] || []).push(t.task_id);
    for (let i = 0; i < layers.length; i++) layers[i] = layers[i] || [];

    const maxLen = Math.max(4, ...tasks.map((t) => t.task_id.length));
    const NW = Math.min(260, Math.max(90, Math.round(maxLen * 7.4 + 24)));
    const NH = 28, GX = 56, GY = 14, PAD = 10;
    // Edges that skip a layer bow upwards (see below); leave room for them at the top.
    const anyLong = tasks.some((t) => deps(t.task_id).some((p) => layerOf.get(t.task_id) - layerOf.get(p) > 1));
    const TOP = anyLong ? 24 : PAD;
    const maxRows = Math.max(1, ...layers.map((l) => l.length));
    const pos = new Map(); // task id -> {x, y}
    layers.forEach((L, li) => {
      if (li > 0) {
        const order = new Map(L.map((id, i) => [id, i]));
        const bary = (id) => {
          const ps = deps(id).filter((p) => pos.has(p));
          return ps.length ? ps.reduce((a, p) => a + pos.get(p).y, 0) / ps.length : Infinity;
        };
        L.sort((a, b) => (bary(a) - bary(b)) || (order.get(a) - order.get(b)));
      }
      const offset = ((maxRows - L.length) * (NH + GY)) / 2;
      L.forEach((id, i) => pos.set(id, { x: PAD + li * (NW + GX), y: TOP + offset + i * (NH + GY) }));
    });

    const W = PAD * 2 + Math.max(1, layers.length) * (NW + GX) - GX;
    const H = TOP + PAD + maxRows * (NH + GY) - GY;
    const svg = s('svg', { class: 'dag-graph', width: W, height: H, viewBox: `0 0 ${W} ${H}` },
      s('defs', null, s('marker', {
        id: 'orch-arrow', viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto',
      }, s('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrowhead' }))));

    const edges = s('g', { class: 'edges' });
    for (const t of tasks) {
      const b = pos.get(t.task_id);
      for (const p of deps(t.task_id)) {
        const a = pos.get(p);
        const x1 = a.x + NW, y1 = a.y + NH / 2, x2 = b.x - 1, y2 = b.y + NH / 2, mx = (x1 + x2) / 2;
        // A layer-skipping edge bows upwards so it does not run through the nodes between.
        const bow = layerOf.get(t.task_id) - layerOf.get(p) > 1 ? NH + 8 : 0;
        const d = bow
          ? `M${x1},${y1} C${x1 + GX},${y1 - bow} ${x2 - GX},${y2 - bow} ${x2},${y2}`
          : `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`;
        edges.append(s('path', {
          class: 'edge', d,
          'marker-end': 'url(#orch-arrow)', 'data-from': p, 'data-to': t.task_id,
        }));
      }
    }
    svg.append(edges);

    const maxChars = Math.floor((NW - 14) / 7.4);
    const nodes = new Map();
    for (const t of tasks) {
      const p = pos.get(t.task_id);
      const label = t.task_id.length > maxChars ? t.task_id.slice(0, maxChars - 1) + '…' : t.task_id;
      const title = s('title', null, `${t.task_id} (${t.kind})`);
      const g = s('g', { class: 'node state-none', 'data-task': t.task_id, transform: `translate(${p.x},${p.y})` },
        title,
        s('rect', { width: NW, height: NH, rx: 6, ry: 6 }),
        s('text', { x: NW / 2, y: NH / 2 + 4, 'text-anchor': 'middle' }, label));
      nodes.set(t.task_id, { g, title, kind: t.kind });
      svg.append(g);
    }

    return {
      svg,
      // Colour nodes by the task states of one run ({task_id: {state, try_number}}).
      setStates(states) {
        for (const [id, n] of nodes) {
          const st = states[id] ? states[id].state : 'none';
          n.g.setAttribute('class', 'node ' + cls(st));
          n.g.setAttribute('data-state', st);
          n.title.textContent = `${id} (${n.kind}): ${st}`;
        }
      },
    };
  }

  // Bar chart of run durations (seconds), oldest left; each bar links to its run.
  function durationChart(runs) {
    const W = Math.max(360, Math.min(900, 60 + runs.length * 26)), H = 170;
    const L = 48, R = 10, T = 10, B = 22;
    const pw = W - L - R, ph = H - T - B;
    const secs = runs.map((r) => (r.duration_ms === null || r.duration_ms === undefined ? null : r.duration_ms / 1000));
    const max = niceMax(Math.max(0, ...secs.filter((v) => v !== null)));
    const svg = s('svg', { class: 'duration-chart', width: W, height: H, viewBox: `0 0 ${W} ${H}` });
    for (const frac of [0, 0.5, 1]) {
      const y = T + ph - frac * ph;
      svg.append(
        s('line', { class: frac ? 'gridline' : 'axis', x1: L, x2: W - R, y1: y, y2: y }),
        s('text', { class: 'label', x: L - 6, y: y + 4, 'text-anchor': 'end' }, `${trimNum(max * frac)} s`));
    }
    svg.append(s('line', { class: 'axis', x1: L, x2: L, y1: T, y2: T + ph }));
    const slot = pw / runs.length;
    const bw = Math.max(2, Math.min(20, slot - 4));
    runs.forEach((r, i) => {
      const v = secs[i];
      if (v === null) return;
      const bh = Math.max(1, (v / max) * ph);
      const x = L + i * slot + (slot - bw) / 2;
      svg.append(s('a', { href: runHref(r.run_id) },
        s('title', null, `${fmtTime(r.logical_date)} · ${r.state} · ${fmtDur(r.duration_ms)}`),
        s('rect', { class: 'bar ' + cls(r.state), x, y: T + ph - bh, width: bw, height: bh, rx: 2 })));
    });
    if (runs.length) {
      svg.append(
        s('text', { class: 'label', x: L, y: H - 6 }, fmtTime(runs[0].logical_date)),
        s('text', { class: 'label', x: W - R, y: H - 6, 'text-anchor': 'end' }, fmtTime(runs[runs.length - 1].logical_date)));
    }
    return svg;
  }

  // ------------------------------------------------------------------ /dags/ID/trigger

  async function triggerPage(root, page, dagId) {
    document.title = `orch – trigger ${dagId}`;
    const dag = await api(`/api/v1/dags/${enc(dagId)}`);
    if (!page.alive) return;
    const params = dag.params || [];
    const formError = h('div', { class: 'form-error error', role: 'alert' });
    formError.hidden = true;
    const fieldErr = new Map(); // param name -> span.field-error
    const fields = [];

    const errSpan = (name) => {
      const sp = h('span', { class: 'field-error', 'data-field': name });
      fieldErr.set(name, sp);
      return sp;
    };

    for (const p of params) {
      const id = 'param-' + p.name.replace(/[^A-Za-z0-9_-]/g, '_');
      const def = p.default;
      const hasDef = def !== null && def !== undefined;
      let input;
      if (p.type === 'boolean') {
        input = h('input', { type: 'checkbox', id, name: p.name, checked: def === true });
      } else if (p.type === 'integer' || p.type === 'number') {
        input = h('input', {
          type: 'number', id, name: p.name, step: p.type === 'integer' ? '1' : 'any', value: hasDef ? String(def) : null,
        });
      } else if (p.type === 'list' || p.type === 'object') {
        input = h('textarea', { id, name: p.name, rows: 4, spellcheck: 'false' });
        input.value = hasDef ? JSON.stringify(def, null, 2) : (p.type === 'list' ? '[]' : '{}');
      } else if (p.type === 'enum') {
        // Option values carry the JSON of each allowed value, so numbers stay numbers.
        input = h('select', { id, name: p.name },
          hasDef ? null : h('option', { value: '' }, '—'),
          (p.values || []).map((v) => h('option', {
            value: JSON.stringify(v), selected: hasDef && JSON.stringify(v) === JSON.stringify(def),
          }, typeof v === 'string' ? v : JSON.stringify(v))));
      } else if (p.type === 'date') {
        input = h('input', { type: 'date', id, name: p.name, value: hasDef ? String(def) : null });
      } else {
        input = h('input', {
          type: 'text', id, name: p.name, value: hasDef ? (typeof def === 'string' ? def : JSON.stringify(def)) : null,
        });
      }
      const node = h('div', { class: 'field', 'data-param': p.name },
        h('label', { for: id }, p.name, h('span', { class: 'type' }, paramRules(p))),
        p.description ? h('div', { class: 'desc' }, p.description) : null,
        input, errSpan(p.name));
      fields.push({ p, input, node });
    }

    const dateInput = h('input', {
      type: 'text', id: 'param-logical-date', name: '__logical_date',
      placeholder: 'optional, e.g. 2026-11-22T04:00:00Z',
    });
    const submit = h('button', { type: 'submit', class: 'primary' }, 'Trigger');
    const form = h('form', { class: 'trigger', novalidate: true },
      fields.length ? fields.map((f) => f.node) : h('p', { class: 'muted' }, 'This DAG has no parameters.'),
      h('div', { class: 'field', 'data-param': '__logical_date' },
        h('label', { for: 'param-logical-date' }, 'Logical date', h('span', { class: 'type' }, 'RFC 3339, UTC')),
        dateInput, errSpan('__logical_date')),
      formError,
      h('div', { class: 'actions' }, submit, h('a', { href: dagHref(dagId) }, 'Cancel')));

    root.append(
      h('h1', null, 'Trigger ', h('a', { href: dagHref(dagId) }, dag.dag_id)),
      dag.description ? h('p', { class: 'muted' }, dag.description) : null,
      form);

    const showFieldError = (name, msg) => {
      const sp = fieldErr.get(name);
      if (!sp) return false;
      sp.textContent = msg;
      sp.closest('.field').classList.add('invalid');
      return true;
    };
    const clearErrors = () => {
      for (const sp of fieldErr.values()) {
        sp.textContent = '';
        sp.closest('.field').classList.remove('invalid');
      }
      formError.textContent = '';
      formError.hidden = true;
    };
    const showFormError = (msg) => {
      formError.textContent = msg;
      formError.hidden = false;
    };

    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      clearErrors();
      // Convert each field to its JSON type; empty numbers are left out so the default applies.
      const conf = {};
      let bad = false;
      for (const { p, input } of fields) {
        if (p.type === 'boolean') conf[p.name] = input.checked;
        else if (p.type === 'integer' || p.type === 'number') {
          const v = input.value.trim();
          if (v === '') {
            if (input.validity && input.validity.badInput) { showFieldError(p.name, 'Not a number'); bad = true; }
            continue;
          }
          const n = Number(v);
          if (!Number.isFinite(n)) { showFieldError(p.name, 'Not a number'); bad = true; continue; }
          conf[p.name] = n;
        } else if (p.type === 'list' || p.type === 'object') {
          try {
            conf[p.name] = JSON.parse(input.value);
          } catch (e) {
            showFieldError(p.name, 'Invalid JSON: ' + errMsg(e));
            bad = true;
          }
        } else if (p.type === 'enum') {
          if (input.value !== '') conf[p.name] = JSON.parse(input.value);
        } else if (input.value !== '' || (p.default !== null && p.default !== undefined)) {
          // An empty field without a default is left out: the server says if it is required.
          conf[p.name] = input.value;
        }
      }
      if (bad) { showFormError('Fix the fields marked above.'); return; }
      const body = { conf };
      const ld = dateInput.value.trim();
      if (ld) body.logical_date = ld;

      submit.disabled = true;
      try {
        await post(`/api/v1/dags/${enc(dagId)}/runs`, body);
        if (page.alive) navigate(dagHref(dagId));
      } catch (e) {
        if (!page.alive) return;
        const fe = (e instanceof ApiError && e.data && e.data.field_errors) || {};
        const unplaced = [];
        for (const [name, msg] of Object.entries(fe)) {
          const key = name === 'logical_date' ? '__logical_date' : name;
          if (!showFieldError(key, String(msg))) unplaced.push(`${name}: ${msg}`);
        }
        showFormError([errMsg(e), ...unplaced].join('\n'));
      } finally {
        submit.disabled = false;
      }
    });
  }

  // ------------------------------------------------------------------ /runs/ID : run page

  const FINISHED_RUN = new Set(['success', 'failed', 'skipped']);

  async function runPage(root, page, runId) {
    document.title = `orch – run ${runId}`;
    const errs = h('div');
    const head = h('div');
    const actionErr = h('div', { class: 'action-error' });
    const tasksSlot = h('div');
    const ganttSlot = h('div', { class: 'chart-wrap gantt' });
    const attemptsSlot = h('div');
    const actionsSlot = h('div');
    root.append(errs, head, actionErr,
      h('h2', null, 'Tasks'), tasksSlot,
      h('h2', null, 'Timeline'), ganttSlot,
      h('h2', null, 'Attempts'), attemptsSlot,
      h('h2', null, 'Actions'), actionsSlot);

    const base = `/api/v1/runs/${enc(runId)}`;
    let lastHead = '', lastTasks = '', lastActions = '';

    const poller = page.poll(1000, async () => {
      let run;
      try {
        run = await api(base);
        setError(errs, null);
      } catch (e) {
        setError(errs, e);
        return !(e instanceof ApiError && e.status === 404); // keep retrying unless the run is gone
      }
      if (!page.alive) return false;
      const active = !FINISHED_RUN.has(run.state);
      // Re-render sections only when their data changed, so buttons under the mouse survive.
      const { tasks, actions, ...summary } = run;
      const hs = JSON.stringify(summary), ts = JSON.stringify(tasks), as = JSON.stringify(actions);
      if (hs !== lastHead) { lastHead = hs; head.replaceChildren(...runSummary(run)); }
      const tasksChanged = ts !== lastTasks;
      if (tasksChanged) {
        lastTasks = ts;
        tasksSlot.replaceChildren(taskTable(run));
        attemptsSlot.replaceChildren(attemptTable(run));
      }
      // Running bars grow with the clock, so redraw the timeline every tick while active.
      if (tasksChanged || active) ganttSlot.replaceChildren(gantt(run));
      if (as !== lastActions) { lastActions = as; actionsSlot.replaceChildren(actionList(actions || [])); }
      return active;
    });

    // Delegated action buttons (both the summary and the task table are re-rendered).
    root.addEventListener('click', async (ev) => {
      const btn = ev.target.closest('button[data-action]');
      if (!btn) return;
      const act = btn.dataset.action;
      const task = btn.dataset.task;
      let url, body, question;
      if (act === 'cancel') {
        url = `${base}/cancel`; body = {}; question = 'Cancel this run? Running tasks are stopped.';
      } else if (act === 'clear-run') {
        url = `${base}/clear`; body = { downstream: true }; question = 'Clear the whole run? All tasks run again.';
      } else if (act === 'clear-task') {
        url = `${base}/clear`; body = { task_id: task, downstream: true };
        question = `Clear task "${task}" and its downstream tasks?`;
      } else if (act === 'mark-success' || act === 'mark-failed') {
        const state = act === 'mark-success' ? 'success' : 'failed';
        url = `${base}/tasks/${enc(task)}/mark`; body = { state };
        question = `Mark task "${task}" as ${state}?`;
      } else return;
      if (!window.confirm(question)) return;
      btn.disabled = true;
      try {
        await post(url, body);
        setError(actionErr, null);
      } catch (e) {
        setError(actionErr, e);
      } finally {
        btn.disabled = false;
      }
      poller.kick(); // also restarts polling when a finished run was cleared
    });
  }

  function runSummary(run) {
    const active = !FINISHED_RUN.has(run.state);
    const start = parseTime(run.started_at);
    const end = run.ended_at ? parseTime(run.ended_at) : Date.now();
    return [
      h('h1', null, 'Run ', h('span', { class: 'run-id mono' }, run.run_id), badge(run.state)),
      h('div', { class: 'summary' },
        h('dl', { class: 'info' },
          h('dt', null, 'DAG'), h('dd', null, h('a', { href: dagHref(run.dag_id), class: 'dag-link' }, run.dag_id)),
          h('dt', null, 'State'), h('dd', { class: 'run-state' }, run.state),
          h('dt', null, 'Type'), h('dd', null, run.run_type),
          h('dt', null, 'Logical date'), h('dd', null, fmtTime(run.logical_date)),
          h('dt', null, 'Data interval'), h('dd', null, `${fmtTime(run.data_interval_start)} → ${fmtTime(run.data_interval_end)}`),
          h('dt', null, 'Queued'), h('dd', null, fmtTime(run.queued_at)),
          h('dt', null, 'Started'), h('dd', null, fmtTime(run.started_at)),
          h('dt', null, 'Ended'), h('dd', null, fmtTime(run.ended_at)),
          h('dt', null, 'Duration'), h('dd', null, Number.isNaN(start) ? '—' : fmtDur(end - start)),
          run.note ? [h('dt', null, 'Note'), h('dd', { class: 'note' }, run.note)] : null),
        h('div', null, h('div', { class: 'muted' }, 'Conf'),
          h('pre', { class: 'conf' }, JSON.stringify(run.conf === undefined ? {} : run.conf, null, 2)))),
      h('div', { class: 'actions' },
        active ? h('button', { type: 'button', class: 'danger', 'data-action': 'cancel' }, 'Cancel run') : null,
        h('button', { type: 'button', 'data-action': 'clear-run' }, 'Clear run')),
    ];
  }

  function lastAttempt(t) {
    const a = t.attempts || [];
    return a.length ? a[a.length - 1] : null;
  }

  function taskTable(run) {
    const rows = (run.tasks || []).map((t) => {
      const la = lastAttempt(t);
      return h('tr', { 'data-task': t.task_id, 'data-state': t.state },
        h('td', { class: 'mono' }, t.task_id),
        h('td', null, badge(t.state)),
        h('td', { class: 'num' }, (t.attempts || []).length),
        h('td', { class: 'nowrap' }, la ? h('a', { href: attemptHref(run.run_id, t.task_id, la.attempt), class: 'log-link' }, `log #${la.attempt}`) : '—'),
        h('td', null, h('div', { class: 'actions' },
          h('button', { type: 'button', 'data-action': 'clear-task', 'data-task': t.task_id }, 'Clear'),
          h('button', { type: 'button', 'data-action': 'mark-success', 'data-task': t.task_id }, 'Mark success'),
          h('button', { type: 'button', 'data-action': 'mark-failed', 'data-task': t.task_id }, 'Mark failed'))));
    });
    return table(['Task', 'State', 'Tries', 'Log', ''], rows, 'tasks');
  }

  function attemptTable(run) {
    const rows = [];
    for (const t of run.tasks || []) {
      for (const a of t.attempts || []) {
        const err = a.error ? String(a.error) : '';
        rows.push(h('tr', { 'data-task': t.task_id, 'data-attempt': a.attempt, 'data-state': a.state },
          h('td', { class: 'mono' }, t.task_id),
          h('td', { class: 'num' }, a.attempt),
          h('td', null, badge(a.state)),
          h('td', { class: 'time' }, fmtTime(a.started_at)),
          h('td', { class: 'num nowrap' }, fmtDur(a.duration_ms)),
          h('td', { class: 'num' }, fmtNum(a.rows)),
          h('td', { class: 'num nowrap' }, fmtBytes(a.peak_rss_bytes)),
          h('td', { class: 'num' }, fmtNum(a.cpu_ms)),
          h('td', { class: 'nowrap' }, [a.queue, a.worker].filter(Boolean).join(' / ') || '—'),
          h('td', { class: 'attempt-error' }, err.includes('\n') ? h('pre', { class: 'error-text' }, err) : err,
            a.metrics ? h('div', { class: 'muted mono', title: 'metrics' }, JSON.stringify(a.metrics)) : null),
          h('td', null, h('a', { href: attemptHref(run.run_id, t.task_id, a.attempt), class: 'log-link' }, 'log'))));
      }
    }
    if (!rows.length) return h('p', { class: 'empty' }, 'No attempts yet.');
    return table(['Task', 'Attempt', 'State', 'Started', 'Duration', 'Rows', 'Peak memory', 'CPU ms', 'Queue / worker', 'Error', ''], rows, 'attempts');
  }

  // Gantt chart: one row per task, one bar per attempt (running bars end at "now").
  function gantt(run) {
    const tasks = run.tasks || [];
    const now = Date.now();
    const spans = [];
    for (const t of tasks) {
      for (const a of t.attempts || []) {
        const st = parseTime(a.started_at);
        if (Number.isNaN(st)) continue;
        let en = a.ended_at ? parseTime(a.ended_at) : now;
        if (Number.isNaN(en) || en < st) en = st;
        spans.push({ t, a, st, en });
      }
    }
    if (!spans.length) return h('p', { class: 'empty' }, 'Nothing has started yet.');
    const t0 = Math.min(...spans.map((x) => x.st));
    const t1 = Math.max(t0 + 1000, ...spans.map((x) => x.en));
    const LW = Math.min(260, Math.max(100, 12 + 7 * Math.max(...tasks.map((t) => t.task_id.length))));
    const W = 980, RH = 22, T = 6, B = 22, R = 70;
    const H = T + tasks.length * RH + B;
    const pw = W - LW - R;
    const xOf = (ms) => LW + ((ms - t0) / (t1 - t0)) * pw;
    const svg = s('svg', { class: 'gantt-chart', width: W, height: H, viewBox: `0 0 ${W} ${H}` });
    for (let i = 0; i <= 4; i++) {
      const ms = t0 + ((t1 - t0) * i) / 4;
      const x = xOf(ms);
      svg.append(
        s('line', { class: 'gridline', x1: x, x2: x, y1: T, y2: H - B }),
        s('text', { class: 'label', x, y: H - 6, 'text-anchor': i === 0 ? 'start' : i === 4 ? 'end' : 'middle' },
          t1 - t0 > 20 * 3600e3 ? fmtTime(ms).slice(5, 16) : fmtClock(ms)));
    }
    const rowOf = new Map(tasks.map((t, i) => [t.task_id, i]));
    tasks.forEach((t, i) => {
      const y = T + i * RH;
      svg.append(
        s('line', { class: 'rowline', x1: 0, x2: W, y1: y + RH, y2: y + RH }),
        s('text', { class: 'label mono', x: 4, y: y + RH / 2 + 4 }, t.task_id));
    });
    for (const { t, a, st, en } of spans) {
      const y = T + rowOf.get(t.task_id) * RH + 4;
      const x = xOf(st);
      const w = Math.max(2, xOf(en) - x);
      const dur = a.duration_ms !== null && a.duration_ms !== undefined ? a.duration_ms : en - st;
      const label = fmtDur(dur);
      const right = x + w + 4;
      svg.append(s('a', { href: attemptHref(run.run_id, t.task_id, a.attempt) },
        s('title', null, `${t.task_id} #${a.attempt}: ${a.state}, ${label}\n${fmtTime(a.started_at)} → ${a.ended_at ? fmtTime(a.ended_at) : 'now'}`),
        s('rect', { class: 'bar ' + cls(a.state), x, y, width: w, height: RH - 8, rx: 3, 'data-task': t.task_id, 'data-attempt': a.attempt }),
        right + 60 < W
          ? s('text', { class: 'label', x: right, y: y + RH / 2 }, label)
          : s('text', { class: 'label', x: x + w - 4, y: y + RH / 2, 'text-anchor': 'end' }, label)));
    }
    return svg;
  }

  function actionList(actions) {
    if (!actions.length) return h('p', { class: 'empty' }, 'No actions recorded.');
    return table(['When', 'Action', 'Task', 'Actor', 'Source', 'Detail'], actions.map((a) => h('tr', null,
      h('td', { class: 'time' }, fmtTime(a.at)),
      h('td', null, a.action),
      h('td', { class: 'mono' }, a.task_id || '—'),
      h('td', null, a.actor),
      h('td', null, a.source),
      h('td', null, a.detail === null || a.detail === undefined ? '' :
        typeof a.detail === 'string' ? a.detail : JSON.stringify(a.detail)))), 'run-actions');
  }

  // ------------------------------------------------------------------ log viewer

  async function logPage(root, page, runId, taskId, n) {
    document.title = `orch – ${taskId} #${n}`;
    const base = `/api/v1/runs/${enc(runId)}/tasks/${enc(taskId)}/attempts/${n}`;
    const errs = h('div');
    const nav = h('div', { class: 'attempt-nav' });
    const status = h('div', { class: 'log-status', id: 'log-status' }, 'Loading…');
    const pre = h('pre', { id: 'log', class: 'log' });
    root.append(
      h('h1', null, 'Log ', h('span', { class: 'mono' }, taskId), h('span', { class: 'muted' }, `attempt ${n}`)),
      h('div', { class: 'actions' },
        h('a', { href: runHref(runId), class: 'run-link' }, '← run ', runId)),
      nav, status, errs, pre);

    // Run details give the attempt list (for links) and the attempt state once finished.
    const loadRun = () => api(`/api/v1/runs/${enc(runId)}`).catch(() => null);
    const attemptState = async () => {
      const run = await loadRun();
      const t = run && (run.tasks || []).find((x) => x.task_id === taskId);
      const a = t && (t.attempts || []).find((x) => x.attempt === n);
      return a ? a.state : null;
    };
    const showState = (st) => {
      status.replaceChildren('Finished: ', badge(st || 'unknown'));
      status.dataset.state = st || 'unknown';
    };
    loadRun().then((run) => {
      if (!run || !page.alive) return;
      const t = (run.tasks || []).find((x) => x.task_id === taskId);
      const atts = t ? t.attempts || [] : [];
      nav.replaceChildren(h('span', { class: 'muted' }, 'DAG '), h('a', { href: dagHref(run.dag_id) }, run.dag_id),
        h('span', { class: 'muted' }, atts.length ? ' · attempts:' : ''),
        ...atts.map((a) => h('a', {
          href: attemptHref(runId, taskId, a.attempt), class: 'attempt-link ' + (a.attempt === n ? 'current' : ''),
          'data-attempt': a.attempt, title: a.state,
        }, `#${a.attempt}`, ' ', badge(a.state))));
    });

    // Append text, keeping the view pinned to the bottom only if it already was.
    const append = (text) => {
      const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 8;
      pre.appendChild(document.createTextNode(text));
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    };

    let offset = 0;
    let ended = false;
    let es = null;
    page.onCleanup(() => { if (es) es.close(); });

    // Read everything available via plain GETs; resolves with the `finished` flag.
    const catchUp = async () => {
      for (;;) {
        const d = await api(`${base}/log?offset=${offset}&limit=65536`);
        if (!page.alive) return true;
        const next = typeof d.next_offset === 'number' ? d.next_offset : offset;
        if (d.text) append(d.text);
        const progressed = next > offset;
        offset = next;
        if (!d.text || !progressed) return !!d.finished;
      }
    };

    const finish = async () => {
      ended = true;
      showState(await attemptState());
    };

    // Follow with SSE from the current offset. On any error, close (the browser would
    // otherwise reconnect with the stale offset and duplicate text), catch up by GET, retry.
    const follow = () => {
      if (!page.alive || ended) return;
      status.replaceChildren(badge('running'), ' following…');
      es = new EventSource(`${base}/log/follow?offset=${offset}`);
      es.addEventListener('log', (ev) => {
        try {
          const d = JSON.parse(ev.data);
          if (d.text) append(d.text);
          if (typeof d.next_offset === 'number') offset = d.next_offset;
        } catch (e) {
          console.error('bad log event', e);
        }
      });
      es.addEventListener('end', (ev) => {
        es.close();
        ended = true;
        let st = null;
        try { st = JSON.parse(ev.data).state; } catch (_) { /* keep null */ }
        if (st) showState(st);
        else finish();
      });
      es.onerror = () => {
        es.close();
        if (ended || !page.alive) return;
        page.later(1000, resume);
      };
    };

    const resume = async () => {
      try {
        const finished = await catchUp();
        setError(errs, null);
        if (!page.alive) return;
        if (finished) await finish();
        else follow();
      } catch (e) {
        setError(errs, e);
        if (!(e instanceof ApiError && (e.status === 404 || e.status === 401))) page.later(3000, resume);
        else status.textContent = '';
      }
    };
    resume();
  }

  // ------------------------------------------------------------------ /streams

  async function streamsPage(root, page) {
    document.title = 'orch – streams';
    const errs = h('div');
    const body = h('div');
    root.append(h('h1', null, 'Streams'), errs, body);
    let last = '';
    page.poll(1000, async () => {
      try {
        const d = await api('/api/v1/streams');
        setError(errs, null);
        const str = JSON.stringify(d);
        if (str === last) return;
        last = str;
        const streams = d.streams || [];
        body.replaceChildren(...(streams.length ? streams.map(streamBlock) : [h('p', { class: 'empty' }, 'No streams.')]));
      } catch (e) {
        setError(errs, e);
      }
    });
  }

  // One stream carries several symbols over one connection: its figures are the stream's.
  function streamBlock(st) {
    const lastTrade = typeof st.last_trade_time === 'number' ? new Date(st.last_trade_time).toISOString() : null;
    const row = h('tr', { 'data-stream': st.stream_id, 'data-state': st.state },
      h('td', { class: 'mono' }, (st.symbols || []).join(', ') || '—'),
      h('td', null, badge(st.state)),
      h('td', { class: 'num' }, fmtNum(st.trades_committed)),
      h('td', { class: 'num' }, fmtNum(st.trades_per_second, 1)),
      h('td', { class: 'num nowrap' }, `${fmtNum(st.lag_p50_ms)} / ${fmtNum(st.lag_p99_ms)} ms`),
      h('td', { class: 'num' }, `${fmtNum(st.gaps_detected)} / ${fmtNum(st.gap_trades_filled)}`),
      h('td', { class: 'num' }, fmtNum(st.reconnects)),
      h('td', { class: 'time' }, fmtTime(lastTrade)));
    return h('section', { class: 'stream', 'data-stream': st.stream_id },
      h('h2', null, h('span', { class: 'mono' }, st.stream_id), badge(st.state),
        h('span', { class: 'muted' }, `updated ${fmtTime(st.updated_at)}`)),
      table(['Symbols', 'State', 'Trades', 'Trades/s', 'Lag p50 / p99', 'Gaps detected / filled', 'Reconnects', 'Last trade'], [row], 'symbols'));
  }

  // ------------------------------------------------------------------ /data

  async function dataPage(root, page) {
    document.title = 'orch – data';
    root.append(h('h1', null, 'Data'));
    const d = await api('/api/v1/data/trades');
    if (!page.alive) return;
    if (!d.available) {
      root.append(h('div', { class: 'notice data-unavailable' }, d.reason || 'No trade data available.'));
      return;
    }
    const syms = d.symbols || [];
    if (!syms.length) { root.append(h('p', { class: 'empty' }, 'No symbols.')); return; }
    root.append(h('div', { class: 'cards' }, syms.map((sy) => h('section', { class: 'card', 'data-symbol': sy.symbol },
      h('h2', null, `${sy.symbol} (${sy.exchange})`),
      h('div', { class: 'muted' }, `latest day loaded: ${sy.latest_day || '—'}`),
      priceCharts(sy.points || [])))));
  }

  // Close price line chart with the hourly volume bars beneath, sharing the x axis.
  function priceCharts(points) {
    const pts = points
      .map((p) => ({ t: parseTime(p.time), close: Number(p.close), volume: Number(p.volume), raw: p }))
      .filter((p) => !Number.isNaN(p.t))
      .sort((a, b) => a.t - b.t);
    if (!pts.length) return h('p', { class: 'empty' }, 'No points.');
    const W = 560, L = 70, R = 10, PH = 150, VH = 60, T = 12, GAP = 8, B = 20;
    const H = T + PH + GAP + VH + B;
    const pw = W - L - R;
    const tMin = pts[0].t, tMax = Math.max(pts[pts.length - 1].t, tMin + 1);
    const bw = Math.max(1, pw / pts.length - 1);
    // Inset by half a bar so the first and last volume bars stay inside the plot.
    const xOf = (t) => L + bw / 2 + ((t - tMin) / (tMax - tMin)) * (pw - bw);
    const closes = pts.map((p) => p.close).filter(Number.isFinite);
    const pMin = Math.min(...closes), pMax = Math.max(...closes);
    const span = pMax - pMin || Math.abs(pMax) || 1;
    const yP = (v) => T + PH - ((v - pMin) / span) * PH;
    const minPt = pts.find((p) => p.close === pMin), maxPt = pts.find((p) => p.close === pMax);
    const vMax = Math.max(0, ...pts.map((p) => p.volume).filter(Number.isFinite)) || 1;
    const vTop = T + PH + GAP;

    const svg = s('svg', { class: 'price-chart', width: W, height: H, viewBox: `0 0 ${W} ${H}` });
    svg.append(
      s('line', { class: 'axis', x1: L, x2: W - R, y1: T + PH, y2: T + PH }),
      s('line', { class: 'axis', x1: L, x2: W - R, y1: vTop + VH, y2: vTop + VH }),
      s('text', { class: 'label', x: L - 6, y: T + 8, 'text-anchor': 'end' }, `max ${maxPt.raw.close}`),
      s('text', { class: 'label', x: L - 6, y: T + PH, 'text-anchor': 'end' }, `min ${minPt.raw.close}`),
      s('text', { class: 'label', x: L - 6, y: vTop + 8, 'text-anchor': 'end' }, `vol ${trimNum(vMax)}`),
      s('text', { class: 'label', x: L - 6, y: vTop + VH, 'text-anchor': 'end' }, '0'),
      s('text', { class: 'label', x: L, y: H - 5 }, fmtTime(pts[0].raw.time).slice(0, 16)),
      s('text', { class: 'label', x: W - R, y: H - 5, 'text-anchor': 'end' }, fmtTime(pts[pts.length - 1].raw.time).slice(0, 16)));

    const d = pts.filter((p) => Number.isFinite(p.close))
      .map((p, i) => `${i ? 'L' : 'M'}${xOf(p.t).toFixed(1)},${yP(p.close).toFixed(1)}`).join(' ');
    svg.append(s('path', { class: 'price', d }));
    for (const p of [minPt, maxPt]) svg.append(s('circle', { cx: xOf(p.t), cy: yP(p.close), r: 2.5, class: 'price' }));

    for (const p of pts) {
      if (!Number.isFinite(p.volume)) continue;
      const bh = (p.volume / vMax) * VH;
      svg.append(s('rect', { class: 'volume', x: xOf(p.t) - bw / 2, y: vTop + VH - bh, width: bw, height: Math.max(0, bh) },
        s('title', null, `${fmtTime(p.raw.time)}  O ${p.raw.open} H ${p.raw.high} L ${p.raw.low} C ${p.raw.close}  vol ${p.raw.volume}  trades ${p.raw.trades}`)));
    }
    return svg;
  }

  // ------------------------------------------------------------------ not found

  function notFoundPage(root) {
    document.title = 'orch – not found';
    root.append(h('h1', null, 'Not found'),
      h('p', { class: 'not-found' }, 'No page at ', h('code', null, location.pathname), '. ', h('a', { href: '/' }, 'Back to the DAGs.')));
  }

  // ------------------------------------------------------------------ start

  // Last-resort net: a page bug must not leave an uncaught rejection with no message.
  window.addEventListener('unhandledrejection', (ev) => {
    console.error(ev.reason);
    ev.preventDefault();
  });

  loadSession();
  route();
})();

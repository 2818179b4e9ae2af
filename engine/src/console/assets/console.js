// The sagaflow console: draws each page from the JSON of the engine's data routes. No
// dependencies, no build step. The admin token is kept in sessionStorage (this tab only) and
// sent as `Authorization: Bearer` on every data call.
'use strict';

(() => {
  const TOKEN_KEY = 'sagaflow.console.token';
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const POLL_MS = 3000;
  const main = document.getElementById('main');
  const page = document.body.dataset.page;
  let app = null;

  // ---- DOM ---------------------------------------------------------------------------------

  function put(el, children) {
    for (const c of [children].flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  function attrs(el, props) {
    for (const [k, v] of Object.entries(props || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else el.setAttribute(k === 'cls' ? 'class' : k, v === true ? '' : v);
    }
    return el;
  }

  const h = (tag, props, ...children) => put(attrs(document.createElement(tag), props), children);
  const s = (tag, props, ...children) =>
    put(attrs(document.createElementNS(SVG_NS, tag), props), children);

  function render(...children) {
    main.replaceChildren();
    put(main, children);
  }

  // ---- Formatting --------------------------------------------------------------------------

  const pad = (n, w = 2) => String(n).padStart(w, '0');

  function time(iso, withDate = true) {
    if (!iso) return '';
    const d = new Date(iso);
    const t = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}.${pad(d.getUTCMilliseconds(), 3)}`;
    return withDate ? `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${t}` : t;
  }

  function age(seconds) {
    if (seconds === null || seconds === undefined) return '';
    if (seconds < 90) return `${Math.round(seconds)} s`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
    if (seconds < 129600) return `${Math.round(seconds / 3600)} h`;
    return `${Math.round(seconds / 86400)} d`;
  }

  const ms = (v) => (v === null || v === undefined ? '' : v === 0 ? '0' : v < 1000 ? `${v.toFixed(v < 10 ? 1 : 0)} ms` : `${(v / 1000).toFixed(2)} s`);
  const num = (n) => (n === null || n === undefined ? '–' : Number(n).toLocaleString('en'));
  const json = (v) => JSON.stringify(v, null, 2);
  const short = (id) => String(id).slice(0, 8);
  const badge = (state) => h('span', { cls: `state state-${state}` }, state);
  const sagaLink = (id, text) => h('a', { href: `/console/sagas/${id}`, cls: 'mono' }, text || id);
  const streamHref = (id, version) =>
    `/console/streams/${encodeURIComponent(id)}${version ? `?v=${version}` : ''}`;
  const streamLink = (id, version) => h('a', { href: streamHref(id, version), cls: 'mono' }, id);

  function params() {
    return new URLSearchParams(location.search);
  }

  function query(values) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(values)) if (v !== null && v !== undefined && v !== '') q.set(k, v);
    const text = q.toString();
    return text ? `?${text}` : '';
  }

  // ---- Data --------------------------------------------------------------------------------

  class Refused extends Error {
    constructor(status, body) {
      const e = (body && body.error) || {};
      super(e.message || `HTTP ${status}`);
      this.status = status;
      this.code = e.code || 'http_' + status;
      this.body = body;
    }
  }

  async function api(path, { method = 'GET', body, accept = [] } = {}) {
    const headers = { Accept: 'application/json' };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    let answer = null;
    try {
      answer = await r.json();
    } catch (_) {
      answer = null;
    }
    if (r.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      askToken('The token was refused: enter it again.');
      throw new Refused(401, answer);
    }
    if (!r.ok && !accept.includes(r.status)) throw new Refused(r.status, answer);
    return method === 'GET' ? answer : { status: r.status, body: answer };
  }

  function failure(e) {
    return h('p', { cls: 'error', role: 'alert' }, e instanceof Refused ? `${e.code}: ${e.message}` : String(e));
  }

  // An action an operator asked for: confirmed first, its answer shown in `out`.
  async function act(question, path, body, out, done) {
    if (!window.confirm(question)) return;
    try {
      const r = await api(path, { method: 'POST', body, accept: [404, 409] });
      const error = r.status >= 400 ? (r.body && r.body.error) || { code: `http_${r.status}`, message: 'refused' } : null;
      out.replaceChildren(error ? h('span', { cls: 'error' }, `${error.code}: ${error.message}`) : h('span', { cls: 'ok' }, 'Done.'));
      if (!error && done) await done(r.body);
    } catch (e) {
      out.replaceChildren(failure(e));
    }
  }

  // ---- Token -------------------------------------------------------------------------------

  const login = document.getElementById('login');
  const tokenForm = document.getElementById('token-form');
  const tokenInput = document.getElementById('token');
  const tokenError = document.getElementById('token-error');

  function askToken(message) {
    main.hidden = true;
    login.hidden = false;
    tokenError.textContent = message || '';
    tokenInput.value = '';
    tokenInput.focus();
  }

  tokenForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, tokenInput.value.trim());
    login.hidden = true;
    main.hidden = false;
    await start();
  });

  document.getElementById('lock').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    askToken('');
  });

  // ---- Search ------------------------------------------------------------------------------

  document.getElementById('search').addEventListener('submit', async (e) => {
    e.preventDefault();
    const q = document.getElementById('q').value.trim();
    if (!q) return;
    try {
      const found = await api(`/admin/console/search${query({ q })}`);
      const m = found.matches;
      if (m.length === 1 || (m.length > 1 && m[0].how !== m[1].how)) {
        location.href = m[0].href;
        return;
      }
      render(
        h('h1', {}, 'Search'),
        m.length === 0
          ? h('p', { id: 'no-match' }, `Nothing has the id “${q}”: no saga, correlation id, stream or aggregate.`)
          : h('ul', { cls: 'matches' }, m.map((x) => h('li', {}, h('a', { href: x.href }, x.id), ` ${x.kind}, by ${x.how.replace('_', ' ')}: ${x.label}`))),
      );
    } catch (err) {
      render(h('h1', {}, 'Search'), failure(err));
    }
  });

  // ---- Charts (inline SVG) -----------------------------------------------------------------

  const W = 640, H = 190, L = 52, R = 12, T = 12, B = 24;

  // The top of an axis of four intervals: each a round number.
  function niceMax(v, whole) {
    if (!(v > 0)) return whole ? 4 : 1;
    if (whole && v <= 4) return 4;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 4, 6, 8, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  // The frame of a chart over `n` buckets starting at `starts`: axes, grid, time labels.
  function frame(starts, max, unit) {
    const g = s('g', { cls: 'frame' });
    for (let i = 0; i <= 4; i++) {
      const y = T + ((H - T - B) * i) / 4;
      const v = max * (1 - i / 4);
      put(g, s('line', { x1: L, x2: W - R, y1: y, y2: y, cls: 'grid' }));
      put(g, s('text', { x: L - 6, y: y + 4, 'text-anchor': 'end' }, unit === 'ms' ? ms(v) : num(Math.round(v * 100) / 100)));
    }
    const n = starts.length;
    for (const i of [0, Math.floor(n / 2), n - 1]) {
      if (n === 0) break;
      const x = L + ((W - L - R) * (i + 0.5)) / n;
      put(g, s('text', { x, y: H - 6, 'text-anchor': 'middle' }, time(starts[i], false).slice(0, 5)));
    }
    return g;
  }

  function legend(series) {
    return h('div', { cls: 'legend' }, series.map((x) => h('span', { cls: `key ${x.cls}` }, x.label)));
  }

  // Stacked bars: one bar per bucket, one segment per series.
  function bars(id, buckets, series) {
    const totals = buckets.map((b) => series.reduce((t, x) => t + b[x.key], 0));
    const max = niceMax(Math.max(0, ...totals), true);
    const chart = s('svg', { id, viewBox: `0 0 ${W} ${H}`, cls: 'chart', role: 'img' });
    put(chart, frame(buckets.map((b) => b.start), max));
    const bw = (W - L - R) / Math.max(1, buckets.length);
    buckets.forEach((b, i) => {
      let y = H - B;
      for (const x of series) {
        const hgt = ((H - T - B) * b[x.key]) / max;
        if (hgt <= 0) continue;
        y -= hgt;
        put(chart, s('rect', { x: L + i * bw + 1, y, width: Math.max(1, bw - 2), height: hgt, cls: x.cls },
          s('title', {}, `${time(b.start, false)}: ${b[x.key]} ${x.label}`)));
      }
    });
    return h('figure', {}, chart, legend(series));
  }

  // Lines: one polyline per series; a bucket without a value breaks the line.
  function lines(id, buckets, series, unit) {
    const values = buckets.flatMap((b) => series.map((x) => b[x.key]).filter((v) => v !== null && v !== undefined));
    const max = niceMax(Math.max(0, ...values));
    const chart = s('svg', { id, viewBox: `0 0 ${W} ${H}`, cls: 'chart', role: 'img' });
    put(chart, frame(buckets.map((b) => b.start), max, unit));
    const bw = (W - L - R) / Math.max(1, buckets.length);
    for (const x of series) {
      let run = [];
      const flush = () => {
        if (run.length === 1) put(chart, s('circle', { cx: run[0][0], cy: run[0][1], r: 2.5, cls: x.cls }));
        if (run.length > 1) put(chart, s('polyline', { points: run.map((p) => p.join(',')).join(' '), cls: `line ${x.cls}` }));
        run = [];
      };
      buckets.forEach((b, i) => {
        const v = b[x.key];
        if (v === null || v === undefined) return flush();
        run.push([L + (i + 0.5) * bw, H - B - ((H - T - B) * v) / max]);
      });
      flush();
    }
    return h('figure', {}, chart, legend(series));
  }

  // ---- Tables ------------------------------------------------------------------------------

  function table(id, head, rows, empty) {
    if (rows.length === 0) return h('p', { id, cls: 'empty' }, empty || 'Nothing.');
    return h('table', { id },
      h('thead', {}, h('tr', {}, head.map((c) => h('th', {}, c)))),
      h('tbody', {}, rows));
  }

  const row = (cells, props) => h('tr', props || {}, cells.map((c) => h('td', {}, c)));

  // ---- Overview ----------------------------------------------------------------------------

  async function overview() {
    const windows = [5, 15, 60, 360];
    let minutes = Number(params().get('window')) || 15;
    const body = h('div', { id: 'overview' });
    const updated = h('span', { cls: 'muted', id: 'updated' });
    const select = h('select', { id: 'window', 'aria-label': 'Window',
      onchange: () => { minutes = Number(select.value); history.replaceState(null, '', query({ window: minutes })); refresh(); } },
    windows.map((m) => h('option', { value: m, selected: m === minutes }, `last ${m} min`)));
    render(h('div', { cls: 'title' }, h('h1', {}, 'Overview'), select, updated), body);

    let timer = null;
    async function refresh() {
      clearTimeout(timer);
      if (document.hidden) {
        timer = setTimeout(refresh, POLL_MS);
        return;
      }
      try {
        const o = await api(`/admin/console/overview${query({ window: minutes })}`);
        body.replaceChildren(...drawOverview(o));
        updated.textContent = `updated ${time(o.at, false).slice(0, 8)} UTC, every ${POLL_MS / 1000} s`;
      } catch (e) {
        if (e.status === 401) return;
        updated.replaceChildren(failure(e));
      }
      timer = setTimeout(refresh, POLL_MS);
    }
    await refresh();
  }

  function drawOverview(o) {
    const totals = {};
    for (const c of o.sagas) totals[c.state] = (totals[c.state] || 0) + c.count;
    const types = [...new Set(o.sagas.map((c) => c.saga_type))];
    const parked = o.dead_letters.filter((d) => d.status === 'parked').reduce((t, d) => t + d.count, 0);
    const lagTotal = o.consumers.reduce((t, c) => t + (c.lag || 0), 0);
    const cards = h('div', { cls: 'cards' },
      app.states.map((st) => h('a', { cls: `card card-${st}`, href: `/console/sagas${query({ state: st })}`, dataset: { state: st } },
        h('b', {}, num(totals[st] || 0)), badge(st))),
      h('a', { cls: 'card', href: '/console/dead-letters', id: 'parked' }, h('b', {}, num(parked)), 'dead letters parked'),
      h('div', { cls: 'card', id: 'outbox' }, h('b', {}, num(o.outbox.depth)),
        'in the outbox', o.outbox.oldest_seconds ? h('small', {}, ` oldest ${age(o.outbox.oldest_seconds)}`) : null),
      h('div', { cls: 'card' }, h('b', {}, num(lagTotal)), 'messages of consumer lag'));
    const byType = table('by-type', ['Saga type', ...app.states],
      types.map((t) => row([t, ...app.states.map((st) => {
        const c = o.sagas.find((x) => x.saga_type === t && x.state === st);
        return c ? h('a', { href: `/console/sagas${query({ saga_type: t, state: st })}` }, num(c.count)) : '0';
      })])), 'No saga has started yet.');
    const span = `${o.bucket_seconds} s buckets over ${o.window_seconds / 60} min`;
    return [
      cards,
      h('section', {}, h('h2', {}, 'Sagas by type and state'), byType),
      h('div', { cls: 'two' },
        h('section', {}, h('h2', {}, 'Sagas ended ', h('small', {}, span)),
          bars('throughput', o.throughput, [
            { key: 'completed', label: 'completed', cls: 's-completed' },
            { key: 'compensated', label: 'compensated', cls: 's-compensated' },
            { key: 'failed', label: 'failed', cls: 's-failed' },
          ])),
        h('section', {}, h('h2', {}, 'Step latency ', h('small', {}, span)),
          lines('latency', o.latency, [
            { key: 'p50_ms', label: 'p50', cls: 's-p50' },
            { key: 'p95_ms', label: 'p95', cls: 's-p95' },
          ], 'ms'))),
      h('div', { cls: 'two' },
        h('section', {}, h('h2', {}, 'Steps'),
          table('steps', ['Saga', 'Step', 'Count', 'p50', 'p95', 'Max'],
            o.steps.map((x) => row([x.saga_type, x.step, num(x.count), ms(x.p50_ms), ms(x.p95_ms), ms(x.max_ms)])),
            'No step finished in this window.')),
        h('section', {}, h('h2', {}, 'Consumer lag'),
          table('lag', ['Group', 'Topic', 'Lag'],
            o.consumers.map((c) => row([c.group, c.topic, c.error ? h('span', { cls: 'error', title: c.error }, 'unknown') : num(c.lag)],
              { cls: c.lag > 0 ? 'behind' : '' }))))),
      h('div', { cls: 'two' },
        h('section', {}, h('h2', {}, 'Stuck longest ', h('small', {}, 'running or compensating')),
          table('stuck', ['Saga', 'Type', 'State', 'Step', 'Idle'],
            o.stuck.map((x) => row([sagaLink(x.saga_id, short(x.saga_id)), x.saga_type, badge(x.state), x.current_step || '', age(x.idle_seconds)])),
            'No saga is running.')),
        h('section', {}, h('h2', {}, 'Dead letters'),
          table('dead-letter-counts', ['Consumer', 'Status', 'Count'],
            o.dead_letters.map((d) => row([d.consumer, d.status, h('a', { href: `/console/dead-letters${query({ status: d.status })}` }, num(d.count))])),
            'No message was ever parked.'))),
    ];
  }

  // ---- Sagas -------------------------------------------------------------------------------

  async function sagas() {
    const p = params();
    const current = (k) => p.get(k) || '';
    const stateOptions = [['', 'any state'], ['running,compensating', 'not ended'], ...app.states.map((x) => [x, x])];
    const form = h('form', { cls: 'filters', id: 'filters', method: 'get', action: '/console/sagas' },
      h('label', {}, 'Type ', h('select', { name: 'saga_type' },
        h('option', { value: '' }, 'any type'),
        app.sagas.map((x) => h('option', { value: x.name, selected: current('saga_type') === x.name }, x.name)))),
      h('label', {}, 'State ', h('select', { name: 'state' },
        stateOptions.map(([v, t]) => h('option', { value: v, selected: current('state') === v }, t)))),
      h('label', {}, 'Idle for at least ', h('input', { name: 'older_than', value: current('older_than'), size: 6, placeholder: 'seconds' })),
      h('label', {}, 'Id ', h('input', { name: 'q', value: current('q'), size: 38, placeholder: 'saga, correlation or aggregate id' })),
      h('button', { type: 'submit' }, 'Filter'));
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const values = {};
      for (const [k, v] of new FormData(form)) values[k] = v;
      location.search = query(values);
    });
    render(h('h1', {}, 'Sagas'), form, h('p', { cls: 'muted' }, 'Sagas that have not ended come first, the least recently updated first; then those that ended, the latest first.'), h('div', { id: 'list' }, 'Loading…'));
    const list = document.getElementById('list');
    try {
      const filters = { saga_type: current('saga_type'), state: current('state'), older_than: current('older_than'), q: current('q') };
      const page = await api(`/admin/console/sagas${query({ ...filters, after: current('after') })}`);
      list.replaceChildren(
        table('sagas', ['Saga', 'Type', 'State', 'Step', 'Failure', 'Started', 'Updated', 'Idle'],
          page.sagas.map((x) => row([
            sagaLink(x.saga_id, short(x.saga_id)), x.saga_type, badge(x.state), x.current_step || '',
            x.failure ? h('span', { title: x.failure.message || '' }, `${x.failure.step}: ${x.failure.code}`) : '',
            time(x.started_at), time(x.updated_at), age(x.idle_seconds)],
          { dataset: { sagaId: x.saga_id }, cls: x.active ? 'active' : '' })),
          'No saga matches.'),
        h('p', { cls: 'paging' },
          current('after') ? h('a', { href: `/console/sagas${query(filters)}` }, '« First page') : null,
          page.next_after ? h('a', { id: 'next', href: `/console/sagas${query({ ...filters, after: page.next_after })}` }, 'Next page »') : null));
    } catch (e) {
      list.replaceChildren(failure(e));
    }
  }

  // ---- A saga ------------------------------------------------------------------------------

  const NODE_W = 150, NODE_H = 54, GAP = 34, ROW2 = 120;

  // The saga's path: forward steps left to right on the first row; compensations on the
  // second row under the steps they undo, running right to left; then the final command and
  // the end. Nodes are appended in the path's order.
  function pathChart(path) {
    const forward = path.filter((n) => n.kind === 'step');
    const back = path.filter((n) => n.kind === 'compensation' || n.kind === 'final' || (n.kind === 'end' && n.status !== 'completed'));
    const failureNode = path.find((n) => n.kind === 'failure');
    const col = new Map();
    forward.forEach((n, i) => col.set(n, i));
    const ended = path.find((n) => n.kind === 'end' && n.status === 'completed');
    if (ended) col.set(ended, forward.length);
    let c = failureNode && failureNode.step !== null && failureNode.step !== undefined
      ? failureNode.step + 1
      : forward.filter((n) => n.status !== 'pending').length;
    for (const n of back) {
      c = n.kind === 'compensation' && n.step !== null ? n.step : c - 1;
      col.set(n, c);
    }
    const min = Math.min(0, ...col.values());
    const max = Math.max(...col.values());
    const x = (n) => 10 + (col.get(n) - min) * (NODE_W + GAP);
    const y = (n) => (forward.includes(n) || n === ended ? 10 : 10 + ROW2);
    const width = 20 + (max - min + 1) * (NODE_W + GAP);
    const height = back.length ? 20 + ROW2 + NODE_H : 20 + NODE_H;
    const chart = s('svg', { id: 'path', viewBox: `0 0 ${width} ${height}`, width, height, role: 'img' },
      s('defs', {}, s('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
        s('path', { d: 'M0,0 L10,5 L0,10 z', cls: 'arrowhead' }))));
    const arrow = (x1, y1, x2, y2, cls) => put(chart, s('path', { d: `M${x1},${y1} L${x2},${y2}`, cls: `edge ${cls || ''}`, 'marker-end': 'url(#arrow)' }));
    const laid = [...forward, ...(ended ? [ended] : []), ...back];
    // Edges first, so the nodes cover their ends.
    for (let i = 1; i < forward.length + (ended ? 1 : 0); i++) {
      const a = laid[i - 1], b = laid[i];
      arrow(x(a) + NODE_W, y(a) + NODE_H / 2, x(b) - 2, y(b) + NODE_H / 2, b.status === 'pending' ? 'pending' : '');
    }
    if (back.length) {
      const turn = forward[failureNode && failureNode.step !== null && failureNode.step !== undefined ? failureNode.step : Math.max(0, forward.filter((n) => n.status !== 'pending').length - 1)];
      const first = back[0];
      if (turn) {
        const tx = x(turn) + NODE_W / 2;
        const fx = x(first) + NODE_W / 2;
        put(chart, s('path', { d: `M${tx},${y(turn) + NODE_H} L${tx},${y(first) - 20} L${fx},${y(first) - 20} L${fx},${y(first) - 2}`, cls: 'edge back', 'marker-end': 'url(#arrow)', fill: 'none' }));
      }
      for (let i = 1; i < back.length; i++) {
        const a = back[i - 1], b = back[i];
        arrow(x(a), y(a) + NODE_H / 2, x(b) + NODE_W + 2, y(b) + NODE_H / 2, 'back');
      }
    }
    for (const n of path) {
      if (n.kind === 'failure') continue;
      const label = n.kind === 'end' ? n.status : n.kind === 'final' ? 'on_compensated' : n.name;
      const sub = n.kind === 'compensation' ? `undo · ${n.status}` : n.kind === 'final' ? `final · ${n.status}` : n.kind === 'end' ? 'saga ended' : n.status;
      const detail = [`${n.kind} ${label}: ${n.status}`, n.attempts ? `attempts ${n.attempts}` : '', n.timeouts ? `timeouts ${n.timeouts}` : '', ...n.errors, ...n.commands].filter(Boolean).join('\n');
      const failed = n.kind === 'step' && n.status === 'failed' && failureNode;
      put(chart, s('g', { cls: `node kind-${n.kind} status-${n.status}`, transform: `translate(${x(n)},${y(n)})`, dataset: { kind: n.kind, name: n.name, status: n.status } },
        s('title', {}, detail),
        s('rect', { width: NODE_W, height: NODE_H, rx: n.kind === 'end' ? NODE_H / 2 : 6 }),
        s('text', { x: NODE_W / 2, y: 22, 'text-anchor': 'middle', cls: 'name' }, label.length > 20 ? `${label.slice(0, 19)}…` : label),
        s('text', { x: NODE_W / 2, y: 40, 'text-anchor': 'middle', cls: 'sub' },
          failed ? `✕ ${failureNode.code}` : `${sub}${n.attempts > 1 ? ` · ${n.attempts} tries` : ''}${n.timeouts ? ` · ${n.timeouts} t/o` : ''}`)));
    }
    return chart;
  }

  // What changed between two JSON values: [{path, kind: added|removed|changed, before, after}].
  function diff(before, after, path = '', out = []) {
    const isObj = (v) => v !== null && typeof v === 'object';
    if (isObj(before) && isObj(after) && Array.isArray(before) === Array.isArray(after)) {
      const keys = new Set([...Object.keys(before), ...Object.keys(after)]);
      for (const k of keys) {
        const p = Array.isArray(after) ? `${path}[${k}]` : path ? `${path}.${k}` : k;
        if (!(k in before)) out.push({ path: p, kind: 'added', after: after[k] });
        else if (!(k in after)) out.push({ path: p, kind: 'removed', before: before[k] });
        else diff(before[k], after[k], p, out);
      }
    } else if (JSON.stringify(before) !== JSON.stringify(after)) {
      out.push({ path: path || '(whole state)', kind: before === undefined ? 'added' : 'changed', before, after });
    }
    return out;
  }

  function diffTable(id, changes, empty) {
    const v = (x) => (x === undefined ? '' : h('code', {}, JSON.stringify(x)));
    return table(id, ['Field', 'Change', 'Before', 'After'],
      changes.map((c) => row([h('code', {}, c.path), c.kind, v(c.before), v(c.after)], { cls: `change-${c.kind}` })),
      empty || 'Nothing changed.');
  }

  // A saga that has not ended is read again every few seconds, and drawn again if it moved.
  let sagaTimer = null;

  async function saga(shown) {
    clearTimeout(sagaTimer);
    const id = decodeURIComponent(location.pathname.split('/').pop());
    if (shown === undefined) render(h('p', {}, 'Loading…'));
    let d;
    try {
      d = await api(`/admin/console/sagas/${encodeURIComponent(id)}`);
    } catch (e) {
      if (shown === undefined) render(h('h1', {}, 'Saga'), failure(e));
      return;
    }
    const v = d.saga;
    const active = v.state === 'running' || v.state === 'compensating';
    if (active) sagaTimer = setTimeout(() => saga(v.version), POLL_MS);
    if (shown === v.version) return;
    const out = h('span', { id: 'action-result', cls: 'muted' });
    // After an action, the saga as it is now, with the action's answer.
    const reload = () => {
      clearTimeout(sagaTimer);
      sagaTimer = setTimeout(async () => {
        await saga(null);
        const shownNow = document.getElementById('action-result');
        if (shownNow) shownNow.replaceWith(out);
      }, 300);
    };
    const failed = v.failure ? `${v.failure.step}: ${v.failure.code}: ${v.failure.message}` : '';
    const own = `saga-${v.saga_id}`;
    render(
      h('div', { cls: 'title' }, h('h1', {}, `${v.saga_type} `, h('span', { cls: 'mono' }, short(v.saga_id))), badge(v.state),
        h('span', { cls: 'actions' },
          h('button', { id: 'retry-step', disabled: !d.actions.retry_step, title: 'Re-drive a failed saga, or a timed-out step now',
            onclick: () => act(`Retry the stuck step of saga ${v.saga_id}?`, `/admin/sagas/${v.saga_id}/retry-step`, undefined, out, reload) }, 'Retry step'),
          h('button', { id: 'abort', cls: 'danger', disabled: !d.actions.abort, title: 'Compensate the completed steps and end the saga',
            onclick: () => act(`Abort saga ${v.saga_id}? Its completed steps will be compensated.`, `/admin/sagas/${v.saga_id}/abort`, { reason: 'aborted from the console' }, out, reload) }, 'Abort'),
          out)),
      h('dl', { cls: 'facts' },
        h('dt', {}, 'Saga id'), h('dd', { cls: 'mono' }, v.saga_id),
        h('dt', {}, 'Correlation id'), h('dd', { cls: 'mono' }, v.correlation_id),
        h('dt', {}, 'Started'), h('dd', {}, time(v.started_at)),
        h('dt', {}, 'Updated'), h('dd', {}, time(v.updated_at)),
        h('dt', {}, 'Version'), h('dd', {}, v.version),
        v.current_step ? [h('dt', {}, 'Current step'), h('dd', {}, v.current_step)] : null,
        failed ? [h('dt', {}, 'Why'), h('dd', { id: 'why', cls: 'error' }, failed)] : null),
      d.dead_letters.length ? h('section', { cls: 'warn' }, h('h2', {}, 'Dead letters of this saga ', h('small', {}, 'messages of its request a consumer parked')),
        table('saga-dead-letters', ['#', 'Consumer', 'Stream', 'Message', 'Error', 'Attempts', 'Failed', 'Status'],
          d.dead_letters.map((x) => row([h('a', { href: `/console/dead-letters${query({ status: x.status })}` }, x.id), x.consumer,
            x.stream_id ? streamLink(x.stream_id) : '', x.message || '', h('span', { cls: 'error' }, x.error), x.attempts, time(x.last_failed_at), x.status],
          { dataset: { id: x.id, status: x.status } })))) : null,
      h('section', {}, h('h2', {}, 'Path'),
        h('div', { cls: 'scroll' }, pathChart(d.path)),
        table('path-table', ['#', 'What', 'Name', 'Status', 'Attempts', 'Timeouts', 'Errors', 'Commands', 'Started', 'Finished'],
          d.path.map((n, i) => row([i + 1, n.kind, n.name, h('span', { cls: `status-${n.status}` }, n.status), n.attempts || '', n.timeouts || '',
            h('div', {}, n.errors.map((e) => h('div', { cls: 'error' }, e)), n.message && n.kind === 'failure' ? n.message : ''),
            h('div', {}, n.commands.map((c) => h('div', { cls: 'mono' }, c))), time(n.started_at), time(n.finished_at)],
          { dataset: { kind: n.kind, name: n.name } })))),
      h('section', {}, h('h2', {}, 'Data after each step'), dataHistory(d.data)),
      h('section', {}, h('h2', {}, 'Streams it touched'),
        h('ul', { id: 'streams', cls: 'streams' }, d.streams.map((x) => h('li', {}, streamLink(x))))),
      h('section', {}, h('h2', {}, 'Timeline ', h('small', {}, 'its events and its participants’ events, in order')),
        table('timeline', ['Time', 'Source', 'Stream', 'Event', 'What happened'],
          d.timeline.entries.map((e) => row([time(e.at, false), e.source, h('a', { href: streamHref(e.stream_id, e.stream_version), cls: 'mono', title: e.stream_id }, `${e.stream_id === own ? 'saga' : e.stream_id}@${e.stream_version}`), e.event_type, e.summary],
            { cls: `src-${e.source}${e.outcome === 'rejected' || e.code ? ' bad' : ''}` }))),
        d.timeline.truncated ? h('p', { cls: 'muted' }, 'The timeline has more entries than shown.') : null));
  }

  function dataHistory(points) {
    return h('ol', { id: 'data', cls: 'data' }, points.map((p, i) => {
      const changes = i === 0 ? [] : diff(points[i - 1].data, p.data);
      return h('li', {},
        h('b', {}, p.after === 'start' ? 'At the start' : `After ${p.after}`), ' ',
        h('span', { cls: 'muted' }, `version ${p.version}, ${time(p.at)}`), ' ',
        i === 0 ? null : p.changed && changes.length ? diffTable(null, changes) : h('span', { cls: 'muted' }, '(unchanged)'),
        h('details', {}, h('summary', {}, 'data'), h('pre', {}, json(p.data))));
    }));
  }

  // ---- A stream ----------------------------------------------------------------------------

  async function stream() {
    const id = decodeURIComponent(location.pathname.slice('/console/streams/'.length));
    const enc = encodeURIComponent(id);
    render(h('p', {}, 'Loading…'));
    let head, events;
    try {
      head = await api(`/streams/${enc}/state`);
      events = await api(`/streams/${enc}/events?limit=1000`);
    } catch (e) {
      render(h('h1', {}, id), failure(e));
      return;
    }
    const max = head.head_version;
    let version = Math.min(max, Math.max(1, Number(params().get('v')) || max));
    const slider = h('input', { id: 'version', type: 'range', min: 1, max, value: version, 'aria-label': 'Version' });
    const label = h('span', { id: 'version-label' });
    const stateBox = h('pre', { id: 'state' });
    const eventBox = h('div', { id: 'event' });
    const rows = events.events.map((e) => row([e.stream_version, e.event_type, time(e.recorded_at), h('span', { cls: 'mono' }, short(e.metadata.correlation_id))],
      { dataset: { version: e.stream_version }, onclick: () => go(e.stream_version) }));
    const step = (text, id, to) => h('button', { id, type: 'button', onclick: () => go(to()) }, text);
    render(
      h('div', { cls: 'title' }, h('h1', { cls: 'mono' }, id), h('span', { cls: 'muted' }, `${head.aggregate_type}, ${max} event${max === 1 ? '' : 's'}`)),
      h('div', { cls: 'stepper' },
        step('First', 'first', () => 1), step('◀', 'back', () => version - 1), slider, step('▶', 'forward', () => version + 1), step('Last', 'last', () => max), label),
      h('div', { cls: 'two' },
        h('section', {}, h('h2', {}, 'State at this version'), stateBox),
        h('section', {}, h('h2', {}, 'What this event changed'), eventBox)),
      h('section', {}, h('h2', {}, 'Events'),
        table('events', ['Version', 'Event', 'Recorded', 'Correlation'], rows),
        events.next_from_version ? h('p', { cls: 'muted' }, 'Only the first 1000 events are listed; the slider reaches every version.') : null));
    slider.addEventListener('input', () => go(Number(slider.value)));

    let asked = 0;
    async function go(to) {
      version = Math.min(max, Math.max(1, to));
      slider.value = version;
      label.textContent = `version ${version} of ${max}`;
      history.replaceState(null, '', query({ v: version }));
      for (const r of rows) r.classList.toggle('current', Number(r.dataset.version) === version);
      const ask = ++asked;
      try {
        const [now, before, page] = await Promise.all([
          api(`/streams/${enc}/state?at_version=${version}`),
          version > 1 ? api(`/streams/${enc}/state?at_version=${version - 1}`) : Promise.resolve(null),
          api(`/streams/${enc}/events?from_version=${version}&limit=1`),
        ]);
        if (ask !== asked) return;
        const e = page.events[0];
        stateBox.textContent = json(now.state);
        stateBox.dataset.version = version;
        eventBox.replaceChildren(
          h('p', {}, h('b', { id: 'event-type' }, e.event_type), ` at version ${e.stream_version}, ${time(e.recorded_at)}`),
          diffTable('diff', diff(before ? before.state : undefined, now.state), 'This event changed nothing in the state.'),
          h('details', {}, h('summary', {}, 'payload and metadata'), h('pre', {}, json({ payload: e.payload, metadata: e.metadata }))));
      } catch (err) {
        if (ask === asked) eventBox.replaceChildren(failure(err));
      }
    }
    await go(version);
  }

  // ---- Dead letters ------------------------------------------------------------------------

  async function deadLetters() {
    const p = params();
    const status = p.has('status') ? p.get('status') : 'parked';
    const tabs = h('p', { cls: 'tabs' }, [['parked', 'Parked'], ['retried', 'Retried'], ['discarded', 'Discarded'], ['', 'All']].map(([v, t]) =>
      h('a', { href: `/console/dead-letters?status=${v}`, cls: v === status ? 'on' : '' }, t)));
    const out = h('p', { id: 'action-result', cls: 'muted' });
    const list = h('div', {}, 'Loading…');
    render(h('h1', {}, 'Dead letters'), h('p', { cls: 'muted' }, 'Messages a consumer kept failing on, parked so its partition could move on. A retried message is delivered again and applied once; a discarded one is never applied.'), tabs, out, list);
    async function load() {
      try {
        const page = await api(`/admin/dead-letters${query({ status, limit: 100, after: p.get('after') })}`);
        list.replaceChildren(
          table('dead-letters', ['#', 'Consumer', 'Stream', 'Message', 'Error', 'Attempts', 'Failed', 'Status', ''],
            page.dead_letters.map((d) => row([
              d.id, d.consumer, d.stream_id ? streamLink(d.stream_id) : '', d.event_type || '',
              h('div', {}, h('div', { cls: 'error' }, d.error), h('details', {}, h('summary', {}, 'payload'), h('pre', {}, json(d.envelope)))),
              d.attempts, h('span', { title: `first ${time(d.first_failed_at)}` }, time(d.last_failed_at)), d.status,
              d.status === 'parked' ? h('span', { cls: 'actions' },
                h('button', { cls: 'retry', onclick: () => act(`Deliver dead letter #${d.id} (${d.event_type || 'message'} of ${d.stream_id || d.partition_key}) to ${d.consumer} again?`, `/admin/dead-letters/${d.id}/retry`, undefined, out, load) }, 'Retry'),
                h('button', { cls: 'discard danger', onclick: () => act(`Discard dead letter #${d.id}? ${d.consumer} will never apply it.`, `/admin/dead-letters/${d.id}/discard`, undefined, out, load) }, 'Discard')) : ''],
            { dataset: { id: d.id, status: d.status, stream: d.stream_id || '' } })),
            'No dead letter here.'),
          page.next_after ? h('p', { cls: 'paging' }, h('a', { href: `/console/dead-letters${query({ status, after: page.next_after })}` }, 'Next page »')) : '');
      } catch (e) {
        list.replaceChildren(failure(e));
      }
    }
    await load();
  }

  // ---- Projections -------------------------------------------------------------------------

  async function projections() {
    const out = h('p', { id: 'action-result', cls: 'muted' });
    const list = h('div', {}, 'Loading…');
    render(h('h1', {}, 'Projections'), h('p', { cls: 'muted' }, `Read models: how far each has consumed its topic, and its rebuilds. Updated every ${POLL_MS / 1000} s.`), out, list);
    let timer = null;
    async function load() {
      clearTimeout(timer);
      try {
        const all = await api('/admin/projections');
        list.replaceChildren(table('projections', ['Name', 'Topic', 'State', 'Position', 'End', 'Lag', 'Last rebuild', ''],
          all.projections.map((x) => {
            const r = x.rebuild;
            const total = r.events_total || 0;
            const progress = r.state === 'rebuilding' || r.started_at
              ? h('div', {},
                h('progress', { max: Math.max(1, total), value: Math.min(r.events_processed, total || r.events_processed) }),
                ` ${num(r.events_processed)} of ${num(r.events_total)} events`,
                r.events_per_second ? `, ${num(Math.round(r.events_per_second))}/s` : '',
                r.finished_at ? h('div', { cls: 'muted' }, `finished ${time(r.finished_at)}`) : '',
                r.error ? h('div', { cls: 'error' }, r.error) : '')
              : h('span', { cls: 'muted' }, 'never rebuilt');
            return row([x.name, x.topic, badge(x.state), num(x.position), num(x.end),
              x.lag_error ? h('span', { cls: 'error', title: x.lag_error }, 'unknown') : num(x.lag), progress,
              h('button', { cls: 'rebuild', disabled: x.state === 'rebuilding',
                onclick: () => act(`Rebuild read model ${x.name}? Its tables are emptied and refilled from the event store.`, `/admin/projections/${encodeURIComponent(x.name)}/rebuild`, undefined, out, load) }, 'Rebuild')],
            { dataset: { name: x.name } });
          }), 'This application has no read model.'));
      } catch (e) {
        if (e.status === 401) return;
        list.replaceChildren(failure(e));
      }
      timer = setTimeout(load, POLL_MS);
    }
    await load();
  }

  // ---- Start -------------------------------------------------------------------------------

  const pages = { overview, sagas, saga, stream, 'dead-letters': deadLetters, projections };

  async function start() {
    const nav = document.querySelector(`[data-nav="${page === 'saga' ? 'sagas' : page}"]`);
    if (nav) nav.classList.add('on');
    if (!sessionStorage.getItem(TOKEN_KEY)) {
      askToken('');
      return;
    }
    try {
      app = await api('/admin/console/app');
    } catch (e) {
      if (e.status !== 401) render(failure(e));
      return;
    }
    main.hidden = false;
    login.hidden = true;
    await pages[page]();
  }

  start();
})();

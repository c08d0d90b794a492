// fulcrum status page: takes over the server-rendered snapshot, refreshes it from /status
// every 2 s, and sends drain / enable / disable / weight / reset to the runtime API with
// the bearer token typed into the page. The token lives only in this tab's sessionStorage.
// Rows are updated in place, never rebuilt while their servers stay, so keyboard focus on a
// control survives every refresh.
'use strict';

(() => {
  const POLL_MS = 2000;
  const TOKEN_KEY = 'fulcrum.adminToken';
  const DASH = '–';
  const COLUMNS = ['Server', 'Health', 'Serving', 'Admin state', 'Weight', 'In flight',
    'Requests', 'Errors', 'p50', 'p99', 'Availability', 'MTBF', 'MTTR', 'Ejection', 'Actions'];
  const byId = (id) => document.getElementById(id);

  // Counters of the previous poll, for rates: key "pool/server" -> {requests, errors}.
  let previous = null;

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'text') e.textContent = v;
      else e.setAttribute(k, v);
    }
    e.append(...children);
    return e;
  }

  // Number forms, the same as the server's snapshot (src/admin/page/format.rs).
  function latency(s) {
    if (s == null) return DASH;
    if (s < 0.001) return `${(s * 1e6).toFixed(0)} µs`;
    if (s < 0.01) return `${(s * 1e3).toFixed(2)} ms`;
    if (s < 1) return `${(s * 1e3).toFixed(1)} ms`;
    return `${s.toFixed(2)} s`;
  }
  function duration(secs) {
    const s = Math.round(Math.max(0, secs));
    const m = Math.floor(s / 60);
    const h = Math.floor(s / 3600);
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${m} m ${s % 60} s`;
    if (s < 172800) return `${h} h ${m % 60} m`;
    return `${Math.floor(h / 24)} d ${h % 24} h`;
  }
  const percent = (r) => (r >= 1 ? '100 %' : `${(r * 100).toFixed(3)} %`);
  const rate = (x) => (x == null ? DASH : `${x < 10 ? x.toFixed(2) : x.toFixed(1)}/s`);
  const time = (u) => (u > 0 ? new Date(u * 1000).toISOString().replace(/\.\d+Z$/, 'Z') : DASH);
  const num = (n) => (n == null ? DASH : String(n));

  function describe(v) {
    if (v == null) return DASH;
    if (typeof v === 'string') return v;
    if (Array.isArray(v)) return v.map(describe).join(', ');
    if (typeof v === 'object') return Object.entries(v).map(([k, x]) => `${k}=${describe(x)}`).join(', ');
    return String(v);
  }

  function table(caption, columns, rows) {
    const head = el('tr', {}, ...columns.map((c) => el('th', { scope: 'col', text: c })));
    return el('table', {}, el('caption', { text: caption }), el('thead', {}, head),
      el('tbody', {}, ...rows));
  }

  function setCell(td, main, sub, cls) {
    td.className = cls || '';
    let m = td.querySelector('.main');
    if (!m) { m = el('span', { class: 'main' }); td.append(m); }
    if (m.textContent !== main) m.textContent = main;
    let s = td.querySelector('.sub');
    if (sub) {
      if (!s) { s = el('span', { class: 'sub' }); td.append(s); }
      if (s.textContent !== sub) s.textContent = sub;
    } else if (s) {
      s.remove();
    }
  }

  // ---- summary, listeners, routes, TLS: no controls inside, so rebuilt each poll -------

  function renderSummary(st) {
    byId('s-version').textContent = st.version || DASH;
    byId('s-config').textContent = st.config || DASH;
    byId('s-generation').textContent = num(st.generation);
    const last = st.reload && st.reload.last;
    let text = 'none since start';
    if (last && last.result) {
      text = last.result;
      if (last.at_unix) text += ` at ${time(last.at_unix)}`;
      if (last.error) text += `: ${last.error}`;
    }
    byId('s-reload').textContent = text;
    byId('s-applied').textContent = time(st.reload && st.reload.applied_at_unix);
  }

  function renderListeners(st) {
    const rows = (st.listeners || []).map((l) => el('tr', {},
      el('th', { scope: 'row', text: l.name }), el('td', { text: l.protocol }),
      el('td', { text: l.bind || DASH }), el('td', { text: l.pool || DASH })));
    byId('listeners').replaceChildren(
      table('Listeners', ['Listener', 'Protocol', 'Address', 'Pool'], rows));
    // ROUTES: each listener's routes from /status `listeners[].routes`; none until routing lands.
    const routes = [];
    for (const l of st.listeners || []) {
      if (!Array.isArray(l.routes) || l.routes.length === 0) continue;
      const rrows = l.routes.map((r, i) => el('tr', {},
        el('th', { scope: 'row', text: String(i + 1) }), el('td', { text: describe(r.match) }),
        el('td', { text: describe(r.action != null ? r.action : r.pool) +
          (r.split && r.split.overridden ? ` (admin override: ${describe(r.split.weights)})` : '') })));
      routes.push(table(`Routes of listener ${l.name}`, ['#', 'Match', 'Action'], rrows));
    }
    byId('routes').replaceChildren(...routes);
  }

  function renderTls(st) {
    // TLS: certificates from /status `tls` once TLS lands; the section stays hidden until then.
    const certs = Array.isArray(st.tls) ? st.tls : [];
    byId('tls').hidden = certs.length === 0;
    const now = Date.now() / 1000;
    const rows = certs.map((c) => {
      const days = c.not_after_unix != null ? (c.not_after_unix - now) / 86400 : null;
      const cls = days == null ? '' : days < 7 ? 'bad' : days < 21 ? 'warn' : '';
      return el('tr', {}, el('th', { scope: 'row', text: c.listener || '' }),
        el('td', { text: c.name || '' }), el('td', { text: time(c.not_after_unix) }),
        el('td', { class: cls, text: days == null ? DASH : `${days.toFixed(0)} days` }));
    });
    byId('tls-body').replaceChildren(...(rows.length
      ? [table('Certificates', ['Listener', 'Certificate', 'Expires', 'Left'], rows)] : []));
  }

  // ---- pools: one section per pool, one row per server, updated in place ---------------

  // Runtime changes other than the admin state and the weight (which have their own
  // columns): a ramped weight change or a drain deadline, say.
  function otherOverrides(o) {
    return Object.entries(o || {}).filter(([k]) => k !== 'admin_state' && k !== 'weight')
      .map(([k, v]) => `${k}=${describe(v)}`).join(', ');
  }

  function serverCells(s, rates) {
    const a = s.availability || {};
    const failures = a.failures || 0;
    let weightSub = '';
    if (s.weight_override != null) weightSub = `override; configured ${s.weight}`;
    else if (s.effective_weight !== s.weight) weightSub = `configured ${s.weight}`;
    let mtbf = duration(a.mtbf_seconds || 0);
    if (failures === 0) mtbf = a.up_seconds > 0 ? `≥ ${mtbf}` : DASH;
    let eject = ['no', '', ''];
    if (s.ejected) eject = ['ejected', `${duration(s.ejection_remaining_seconds || 0)} left`, 'bad'];
    else if (s.flap_suppressed) eject = ['held: flapping', '', 'warn'];
    if (s.ejections > 0) eject[1] = eject[1] ? `${eject[1]}; ${s.ejections} so far` : `${s.ejections} so far`;
    const stateCls = { enabled: '', draining: 'warn' }[s.admin_state];
    const lat = s.latency || {};
    return {
      health: [s.health, '', s.health === 'up' ? 'ok' : 'bad'],
      serving: s.eligible ? ['yes', '', 'ok'] : ['no', '', 'warn'],
      state: [s.admin_state, otherOverrides(s.overrides), stateCls == null ? 'bad' : stateCls],
      weight: [num(s.effective_weight), weightSub, ''],
      inflight: [num(s.inflight), '', ''],
      requests: [rate(rates.requests), `${s.requests} total`, ''],
      errors: [rate(rates.errors), `${s.errors} total`, rates.errors > 0 ? 'bad' : ''],
      p50: [latency(lat.p50_seconds), '', ''],
      p99: [latency(lat.p99_seconds), '', ''],
      availability: [a.ratio == null ? DASH : percent(a.ratio),
        failures === 0 ? '' : failures === 1 ? '1 failure' : `${failures} failures`, ''],
      mtbf: [mtbf, '', ''],
      mttr: [failures === 0 ? DASH : duration(a.mttr_seconds || 0), '', ''],
      ejection: eject,
    };
  }

  function actionButton(pool, server, action, label) {
    const b = el('button', { type: 'button', 'data-action': action,
      'aria-label': `${label} ${server} in pool ${pool}`, text: label });
    b.addEventListener('click', () => act(pool, server, action));
    return b;
  }

  function controls(pool, server) {
    const id = `weight-${pool}-${server}`;
    const input = el('input', { id, type: 'number', min: '1', max: '256', step: '1',
      inputmode: 'numeric', required: '' });
    const form = el('form', { 'data-action': 'weight' },
      el('label', { for: id, class: 'visually-hidden', text: `Weight for ${server} in pool ${pool}` }),
      input, el('button', { type: 'submit', 'aria-label': `Set the weight of ${server} in pool ${pool}`, text: 'Set weight' }));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      act(pool, server, 'weight', input.value);
    });
    return el('td', { class: 'actions', 'data-col': 'actions' },
      actionButton(pool, server, 'drain', 'Drain'), ' ',
      actionButton(pool, server, 'enable', 'Enable'), ' ',
      actionButton(pool, server, 'disable', 'Disable'), ' ',
      actionButton(pool, server, 'reset', 'Reset'), form);
  }

  function serverRow(pool, s) {
    const name = el('span', { class: 'main', text: s.name });
    if (s.backup) name.append(' ', el('span', { class: 'badge', text: 'backup' }));
    const tr = el('tr', { 'data-server': s.name },
      el('th', { scope: 'row' }, name, el('span', { class: 'sub', text: s.addr })));
    for (const col of ['health', 'serving', 'state', 'weight', 'inflight', 'requests', 'errors',
      'p50', 'p99', 'availability', 'mtbf', 'mttr', 'ejection']) {
      tr.append(el('td', { 'data-col': col }));
    }
    tr.append(controls(pool, s.name));
    return tr;
  }

  function poolSection(p) {
    const id = `pool-${p.name}`;
    const tbody = el('tbody');
    const t = el('table', {}, el('caption', { text: `Servers of pool ${p.name}` }),
      el('thead', {}, el('tr', {}, ...COLUMNS.map((c) => el('th', { scope: 'col', text: c })))),
      tbody);
    return el('section', { class: 'pool', 'data-pool': p.name, 'aria-labelledby': id },
      el('h3', { id, text: `Pool ${p.name}` }), el('p', { class: 'meta' }),
      el('div', { class: 'scroll', role: 'region', tabindex: '0', 'aria-labelledby': id }, t));
  }

  function rates(key, s, dt) {
    const before = previous && previous.counters.get(key);
    if (!before || dt <= 0 || s.requests < before.requests || s.errors < before.errors) {
      return { requests: null, errors: null };
    }
    return { requests: (s.requests - before.requests) / dt, errors: (s.errors - before.errors) / dt };
  }

  function renderPools(st, now) {
    const root = byId('pools');
    const dt = previous ? (now - previous.at) / 1000 : 0;
    const counters = new Map();
    const pools = st.pools || [];
    // The set of pools and servers changes only on reload: then rebuild, keeping focus.
    const shape = JSON.stringify(pools.map((p) => [p.name, (p.servers || []).map((s) => s.name)]));
    if (root.dataset.shape !== shape) {
      const focused = document.activeElement;
      const again = focused && focused.closest && focused.closest('tr[data-server]')
        ? [focused.closest('section').dataset.pool, focused.closest('tr').dataset.server,
          focused.getAttribute('data-action') || focused.id]
        : null;
      root.replaceChildren(...pools.map((p) => {
        const sec = poolSection(p);
        sec.querySelector('tbody').append(...(p.servers || []).map((s) => serverRow(p.name, s)));
        return sec;
      }));
      root.dataset.shape = shape;
      if (again) refocus(...again);
    }
    for (const p of pools) {
      const sec = root.querySelector(`section[data-pool="${CSS.escape(p.name)}"]`);
      const servers = p.servers || [];
      const serving = servers.filter((s) => s.eligible).length;
      sec.querySelector('.meta').textContent =
        `${p.algorithm} · ${servers.length} servers, ${serving} serving · ${p.inflight} in flight`;
      for (const s of servers) {
        const key = `${p.name}/${s.name}`;
        counters.set(key, { requests: s.requests, errors: s.errors });
        const tr = sec.querySelector(`tr[data-server="${CSS.escape(s.name)}"]`);
        const cells = serverCells(s, rates(key, s, dt));
        for (const [col, [main, sub, cls]] of Object.entries(cells)) {
          setCell(tr.querySelector(`td[data-col="${col}"]`), main, sub, cls);
        }
        const w = tr.querySelector('input[type="number"]');
        if (w.placeholder !== String(s.effective_weight)) w.placeholder = String(s.effective_weight);
      }
    }
    previous = { at: now, counters };
  }

  function refocus(pool, server, what) {
    const sec = byId('pools').querySelector(`section[data-pool="${CSS.escape(pool)}"]`);
    const tr = sec && sec.querySelector(`tr[data-server="${CSS.escape(server)}"]`);
    if (!tr) return;
    const target = tr.querySelector(`[data-action="${CSS.escape(what)}"]`) || (what && document.getElementById(what));
    if (target) target.focus();
  }

  // ---- polling ---------------------------------------------------------------------------

  let timer = 0;

  async function poll() {
    clearTimeout(timer);
    const conn = byId('conn');
    try {
      const r = await fetch('/status', { cache: 'no-store', headers: { Accept: 'application/json' } });
      if (!r.ok) throw new Error(`/status answered ${r.status}`);
      const st = await r.json();
      const now = Date.now();
      renderSummary(st);
      renderListeners(st);
      renderPools(st, now);
      renderTls(st);
      conn.textContent = `Live: updated ${time(now / 1000)}, every ${POLL_MS / 1000} s.`;
      conn.classList.remove('stale');
      document.documentElement.dataset.live = 'true';
    } catch (e) {
      conn.textContent = `Cannot refresh (${e.message}); the numbers shown are stale. Retrying every ${POLL_MS / 1000} s.`;
      conn.classList.add('stale');
    }
    timer = setTimeout(poll, POLL_MS);
  }

  // ---- changes through the runtime API ---------------------------------------------------

  function notice(text, error) {
    const n = byId('notice');
    n.textContent = text;
    n.classList.toggle('error', !!error);
  }

  async function act(pool, server, action, value) {
    const headers = {};
    const token = byId('token').value.trim();
    if (token) headers.Authorization = `Bearer ${token}`;
    let path = `/servers/${encodeURIComponent(pool)}/${encodeURIComponent(server)}/${action}`;
    if (action === 'weight') path += `?value=${encodeURIComponent(value)}`;
    const what = action === 'weight' ? `Weight ${value} for ${server}` : `${action[0].toUpperCase()}${action.slice(1)} ${server}`;
    notice(`${what}: sending…`);
    try {
      const r = await fetch(path, { method: 'POST', headers, cache: 'no-store' });
      const body = await r.json().catch(() => ({}));
      if (!r.ok) {
        notice(`${what} failed: ${r.status} ${body.error || r.statusText}`, true);
        return;
      }
      notice(`${what}: done. ${server} is ${body.admin_state}, weight ${body.effective_weight}.`);
    } catch (e) {
      notice(`${what} failed: ${e.message}`, true);
      return;
    }
    poll();
  }

  function start() {
    byId('controls').hidden = false;
    const input = byId('token');
    input.value = sessionStorage.getItem(TOKEN_KEY) || '';
    input.addEventListener('input', () => {
      if (input.value) sessionStorage.setItem(TOKEN_KEY, input.value);
      else sessionStorage.removeItem(TOKEN_KEY);
    });
    byId('token-form').addEventListener('submit', (ev) => ev.preventDefault());
    byId('token-forget').addEventListener('click', () => {
      input.value = '';
      sessionStorage.removeItem(TOKEN_KEY);
      notice('Token forgotten.');
    });
    poll();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();

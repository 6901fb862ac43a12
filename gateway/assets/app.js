// Sapphire dashboard: live from /ws, controls through the bearer-token API.
// No framework, no build step; served from the binary under a strict CSP (no inline code).
(function () {
  'use strict';

  const MAX_POINTS = 86400;   // a day of one-second equity points
  const MAX_ROWS = 200;       // rows kept per table
  const SHOWN_ROWS = 60;      // rows drawn per table
  const STALE_MS = 6000;      // no message for this long: reconnect
  const TOKEN_KEY = 'sapphire.api_token';
  const CHART_HEIGHT = 340;   // plot and axes; the legend sits below

  const $ = (id) => document.getElementById(id);

  // ---------- formatting (money arrives as exact decimal strings) ----------
  function group(intPart) {
    return intPart.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  }
  function money(s) {
    if (s === null || s === undefined) return '—';
    const str = String(s);
    const neg = str.startsWith('-');
    const body = neg ? str.slice(1) : str;
    const [i, f] = body.split('.');
    return (neg ? '−' : '') + group(i) + (f !== undefined ? '.' + f : '');
  }
  function signed(s) {
    const str = String(s);
    if (!/[1-9]/.test(str)) return money(str.replace(/^-/, ''));
    return str.startsWith('-') ? money(str) : '+' + money(str);
  }
  function signClass(s) {
    const str = String(s);
    if (!/[1-9]/.test(str)) return '';
    return str.startsWith('-') ? 'neg' : 'pos';
  }
  // A row's symbol, after its core's shard when the gateway follows named shards ("a:SOLUSDT").
  function sym(x) {
    return (x.shard && x.shard !== 'main' ? x.shard + ':' : '') + x.symbol;
  }
    function qty(s) {
    return s === null || s === undefined ? '—' : String(s).replace(/^-/, '−');
  }
  // A decimal string cut (not rounded) to at most `places` decimals, for dense columns.
  function cut(s, places) {
    let str = String(s);
    const dot = str.indexOf('.');
    if (dot >= 0) str = str.slice(0, dot + 1 + places).replace(/0+$/, '').replace(/\.$/, '');
    return qty(str === '' || str === '-' ? '0' : str);
  }
  function ns(v) {
    if (!v) return '—';
    if (v < 1000) return v + ' ns';
    if (v < 1e6) return (v / 1000).toFixed(v < 1e4 ? 2 : 1) + ' µs';
    return (v / 1e6).toFixed(v < 1e7 ? 2 : 1) + ' ms';
  }
  function clock(tsNs) {
    if (!tsNs) return '—';
    const d = new Date(tsNs / 1e6);
    return d.toISOString().slice(11, 23);
  }
  function ago(tsNs) {
    const secs = (Date.now() - tsNs / 1e6) / 1000;
    if (secs < 1) return 'now';
    if (secs < 120) return secs.toFixed(0) + 's ago';
    return Math.round(secs / 60) + 'm ago';
  }
  function pct(x, digits) {
    return (x * 100).toFixed(digits === undefined ? 1 : digits) + '%';
  }

  // ---------- DOM helpers (textContent only: nothing from the wire becomes markup) ----------
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function row(cells) {
    const tr = document.createElement('tr');
    for (const c of cells) {
      if (c instanceof Node) {
        tr.appendChild(c);
      } else {
        const [text, cls] = Array.isArray(c) ? c : [c, ''];
        tr.appendChild(el('td', cls, text));
      }
    }
    return tr;
  }
  function fill(tbody, rows, emptyText, columns) {
    const frag = document.createDocumentFragment();
    for (const r of rows) frag.appendChild(r);
    if (!rows.length && emptyText) {
      const tr = document.createElement('tr');
      const td = el('td', 'l empty', emptyText);
      td.colSpan = columns;
      tr.appendChild(td);
      frag.appendChild(tr);
    }
    tbody.replaceChildren(frag);
  }
  function tag(text, cls) {
    const td = el('td', 'l');
    td.appendChild(el('span', 'tag ' + (cls || ''), text));
    return td;
  }
  function setPill(node, text, cls) {
    node.textContent = text;
    node.className = 'pill ' + (cls || '');
  }

  // ---------- state ----------
  const st = {
    instance: null,
    t: [], equity: [], realized: [], unrealized: [],
    fills: [], orders: [], signals: [], risk: [],
    lastEvents: null, lastEventsAt: 0,
    lastMessageAt: 0,
  };
  let chart = null;
  let chartDirty = false;

  function reset() {
    st.t.length = st.equity.length = st.realized.length = st.unrealized.length = 0;
    st.fills = []; st.orders = []; st.signals = []; st.risk = [];
    chartDirty = true;
  }

  // ---------- chart ----------
  function makeChart() {
    const box = $('equity-chart');
    if (typeof uPlot === 'undefined') {
      box.textContent = 'chart library failed to load';
      return;
    }
    const axis = { stroke: '#7d8b9c', grid: { stroke: '#1a2430', width: 1 }, ticks: { stroke: '#1f2a36', width: 1 }, font: '11px ui-monospace, monospace' };
    const opts = {
      width: Math.max(300, box.clientWidth),
      height: CHART_HEIGHT,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), 'Etc/UTC'),
      cursor: { drag: { x: true, y: false } },
      scales: { x: { time: true }, usd: { auto: true }, pnl: { auto: true } },
      series: [
        { value: (u, v) => v === null || v === undefined ? '—' : new Date(v * 1000).toISOString().slice(11, 19) },
        { label: 'Equity', scale: 'usd', stroke: '#4c9aff', width: 2, fill: 'rgba(76,154,255,0.08)', value: (u, v) => v === null || v === undefined ? '—' : v.toFixed(2) },
        { label: 'Realized', scale: 'pnl', stroke: '#2fbf71', width: 1.5, value: (u, v) => v === null || v === undefined ? '—' : v.toFixed(2) },
        { label: 'Unrealized', scale: 'pnl', stroke: '#e8a33d', width: 1.5, value: (u, v) => v === null || v === undefined ? '—' : v.toFixed(2) },
      ],
      axes: [
        Object.assign({}, axis),
        Object.assign({}, axis, { scale: 'usd', size: 78 }),
        Object.assign({}, axis, { scale: 'pnl', side: 1, size: 64, grid: { show: false } }),
      ],
      legend: { live: true },
    };
    chart = new uPlot(opts, [st.t, st.equity, st.realized, st.unrealized], box);
    if (typeof ResizeObserver !== 'undefined') {
      new ResizeObserver(() => {
        if (chart) chart.setSize({ width: Math.max(300, box.clientWidth), height: CHART_HEIGHT });
      }).observe(box);
    }
  }

  function drawChart() {
    if (!chartDirty) return;
    chartDirty = false;
    const box = $('equity-chart');
    box.dataset.points = String(st.t.length);
    if (chart) chart.setData([st.t, st.equity, st.realized, st.unrealized]);
    if (st.t.length > 1) {
      const span = st.t[st.t.length - 1] - st.t[0];
      const h = Math.floor(span / 3600), m = Math.floor((span % 3600) / 60), s = Math.floor(span % 60);
      $('chart-range').textContent = st.t.length + ' points · ' + (h ? h + 'h ' : '') + (h || m ? m + 'm ' : '') + s + 's';
    }
  }

  function onEquity(msg) {
    const last = st.t.length ? st.t[st.t.length - 1] : -Infinity;
    for (const p of msg.points) {
      const t = p[0] / 1000;
      if (t <= last && st.t.length) continue;
      st.t.push(t);
      st.equity.push(p[1]);
      st.realized.push(p[3]);
      st.unrealized.push(p[4]);
    }
    const extra = st.t.length - MAX_POINTS;
    if (extra > 0) {
      st.t.splice(0, extra); st.equity.splice(0, extra); st.realized.splice(0, extra); st.unrealized.splice(0, extra);
    }
    chartDirty = true;
  }

  // ---------- snapshot ----------
  function setKpi(id, text, cls) {
    const o = $(id);
    o.textContent = text;
    o.className = cls || '';
  }

  function onSnapshot(s) {
    setKpi('k-equity', money(s.equity));
    setKpi('k-pnl', signed(s.pnl), signClass(s.pnl));
    setKpi('k-realized', signed(s.realized), signClass(s.realized));
    setKpi('k-unrealized', signed(s.unrealized), signClass(s.unrealized));
    setKpi('k-fees', money(s.fees));
    setKpi('k-drawdown', s.drawdown_pct.toFixed(2) + '%', s.drawdown_pct >= 10 ? 'neg' : '');
    setKpi('k-exposure', money(s.gross_exposure));
    setKpi('k-open', String(s.orders.open));
    setKpi('k-fills', String(s.orders.fills));
    setKpi('k-refused', String(s.orders.refused), s.orders.refused ? 'neg' : '');
    const now = performance.now();
    if (st.lastEvents !== null && now > st.lastEventsAt) {
      const rate = (s.events - st.lastEvents) * 1000 / (now - st.lastEventsAt);
      setKpi('k-rate', rate >= 0 ? Math.round(rate).toLocaleString('en-US') : '—');
    }
    st.lastEvents = s.events; st.lastEventsAt = now;

    // Risk status.
    const r = s.risk;
    const status = $('risk-status');
    const reason = $('halt-reason');
    if (r.killed) setPill(status, 'killed', 'bad');
    else if (r.halted || r.drawdown_halted) setPill(status, 'halted', 'bad');
    else setPill(status, 'trading', 'good');
    status.dataset.state = r.killed ? 'killed' : (r.halted || r.drawdown_halted) ? 'halted' : 'trading';
    document.querySelector('.risk-panel').classList.toggle('stopped', status.dataset.state !== 'trading');
    if (r.halt_reason) {
      reason.textContent = 'stopped by ' + r.halt_reason;
      reason.classList.remove('hidden');
    } else {
      reason.textContent = '';
      reason.classList.add('hidden');
    }
    const ladder = $('ladder');
    if (r.margin_ladder > 0) {
      setPill(ladder, r.margin_ladder === 1 ? 'reduce-only' : 'deleverage', 'warn');
    } else {
      ladder.className = 'pill hidden';
    }
    const dl = el('dl', 'risk-summary');
    const pairs = [
      ['State', r.killed ? 'KILLED' : (r.halted || r.drawdown_halted) ? 'HALTED' : 'trading'],
      ['Halt reason', r.halt_reason || '—'],
      ['Drawdown', s.drawdown_pct.toFixed(2) + '% of ' + money(s.peak_equity)],
      ['Margin ladder', ['normal', 'reduce-only', 'deleverage'][r.margin_ladder] || String(r.margin_ladder)],
      ['Alerts', String(r.alerts)],
    ];
    for (const [k, v] of pairs) { dl.appendChild(el('dt', '', k)); dl.appendChild(el('dd', '', v)); }
    $('risk-summary').replaceChildren(dl);

    // Agents and margin: the active ones, then one line for those with nothing on.
    const isIdle = (a) => !a.paused && !/[1-9]/.test(a.pnl) && !/[1-9]/.test(a.exposure) && !/[1-9]/.test(a.fees) && !/[1-9]/.test(a.margin_used);
    const active = s.agents.filter((a) => !isIdle(a));
    const idle = s.agents.filter(isIdle);
    const agentRows = active.map((a) => {
      const util = a.margin_utilization;
      const meterCell = el('td');
      const wrap = el('div', 'meter-row');
      const meter = el('div', 'meter' + (util >= 0.85 ? ' bad' : util >= 0.6 ? ' warn' : ''));
      const bar = el('span');
      bar.style.width = Math.max(0, Math.min(100, util * 100)).toFixed(1) + '%';
      meter.appendChild(bar);
      wrap.appendChild(meter);
      wrap.appendChild(el('em', '', pct(util)));
      meterCell.appendChild(wrap);
      const name = el('td', 'l', a.name);
      if (a.paused) { name.appendChild(document.createTextNode(' ')); name.appendChild(el('span', 'tag warn', 'paused')); }
      return row([name, [signed(a.pnl), signClass(a.pnl)], money(a.exposure), money(a.margin_used), money(a.margin_budget), meterCell]);
    });
    if (idle.length) {
      const tr = document.createElement('tr');
      tr.className = 'idle';
      const names = idle.length > 3 ? idle[0].name + ' … ' + idle[idle.length - 1].name : idle.map((a) => a.name).join(', ');
      const td = el('td', 'l', idle.length + ' idle: ' + names + ' (no exposure, budget ' + money(idle[0].margin_budget) + ' each)');
      td.colSpan = 6;
      tr.appendChild(td);
      agentRows.push(tr);
    }
    fill($('agents-body'), agentRows, 'no agent has reported yet', 6);

    // Latency.
    fill($('latency-body'), s.latency.map((l) => row([[l.stage, 'l'], ns(l.p50), ns(l.p99), ns(l.p999), ns(l.max), l.count.toLocaleString('en-US')])), 'no samples yet', 6);

    // Feeds and health.
    const books = s.feeds.books;
    const inSync = s.feeds.books_in_sync;
    const failing = s.feeds.checks.filter((c) => !c.ok);
    const feed = $('feed-status');
    setPill(feed, 'feeds ' + inSync + '/' + s.feeds.books_total + (failing.length ? ' · ' + failing.map((c) => c.name).join(',') + ' failing' : ' · ready'), failing.length ? 'bad' : 'good');
    fill($('health-body'), s.feeds.checks.map((c) => row([[c.name, 'l'], tag(c.ok ? 'ok' : 'failing', c.ok ? 'good' : 'bad'), [c.detail, 'l t']])), '', 3);
    fill($('market-body'), books.map((b) => row([
      [b.symbol, 'l'],
      b.bid !== undefined ? qty(b.bid) : '—',
      b.ask !== undefined ? qty(b.ask) : '—',
      b.spread_bps !== undefined && b.spread_bps !== null ? b.spread_bps.toFixed(1) + ' bp' : '—',
      [b.ts_event ? ago(b.ts_event) : '—', 't'],
      tag(b.in_sync ? 'in sync' : 'out of sync', b.in_sync ? 'good' : 'bad'),
    ])), 'no instruments', 6);

    // Event-time age of the last PnL snapshot (timers run on the wall clock).
    const age = $('age');
    if (s.ts_event) {
      const secs = (Date.now() - s.ts_event / 1e6) / 1000;
      age.textContent = 'updated ' + (secs < 1 ? 'now' : secs.toFixed(0) + 's ago');
      age.className = 'pill dim' + (secs > 10 ? ' warn' : '');
    }
    $('foot-text').textContent = 'Sapphire dashboard · times in UTC · events ' + s.events.toLocaleString('en-US') + ' · journaled ' + s.journaled.toLocaleString('en-US') + ' · outputs dropped ' + s.outputs_dropped + ' · dashboard clients ' + s.ws_clients;
  }

  // ---------- records ----------
  function merge(list, items) {
    const lastId = list.length ? list[0].id : 0;
    for (const it of items) if (it.id > lastId) list.unshift(it);
    if (list.length > MAX_ROWS) list.length = MAX_ROWS;
  }

  function renderFills() {
    fill($('fills-body'), st.fills.slice(0, SHOWN_ROWS).map((f) => row([
      [clock(f.ts_event), 'l t'], [f.agent, 'l'], [sym(f), 'l'], [f.side, 'l side-' + f.side], qty(f.qty), qty(f.price), cut(f.fee, 4), [f.liquidity, 'l t'],
    ])), 'no fills yet', 8);
    $('fills-count').textContent = st.fills.length ? 'last ' + Math.min(st.fills.length, SHOWN_ROWS) : '';
  }
  function renderSignals() {
    fill($('signals-body'), st.signals.slice(0, SHOWN_ROWS).map((g) => row([
      [clock(g.ts_event), 'l t'], [g.agent, 'l'], [sym(g), 'l'],
      [(g.strength_bps / 100).toFixed(2) + '%', g.strength_bps > 0 ? 'pos' : g.strength_bps < 0 ? 'neg' : ''],
      (g.confidence_bps / 100).toFixed(0) + '%', (g.ttl_ms / 1000).toFixed(1) + 's', tag(g.taken ? 'taken' : 'ignored', g.taken ? 'good' : ''),
    ])), 'no signals yet', 7);
    $('signals-count').textContent = st.signals.length ? 'last ' + Math.min(st.signals.length, SHOWN_ROWS) : '';
  }
  function renderOrders() {
    const cls = { filled: 'good', rejected: 'bad', canceled: '', open: 'warn', partially_filled: 'warn', sent: '' };
    fill($('orders-body'), st.orders.slice(0, SHOWN_ROWS).map((o) => row([
      [clock(o.ts_event), 'l t'], [o.agent, 'l'], [sym(o), 'l'],
      o.action === 'new' ? [o.side, 'l side-' + o.side] : ['cancel all', 'l t'],
      o.action === 'new' ? qty(o.qty) : '', o.action === 'new' ? qty(o.price) : '', o.action === 'new' ? qty(o.filled) : '',
      tag(o.status.replace('_', ' ') + (o.reason ? ': ' + o.reason : ''), cls[o.status] || ''),
    ])), 'no orders yet', 8);
    $('orders-count').textContent = st.orders.length ? 'last ' + Math.min(st.orders.length, SHOWN_ROWS) : '';
  }
  function renderRisk() {
    fill($('risk-body'), st.risk.slice(0, SHOWN_ROWS).map((r) => row([
      [clock(r.ts_event), 'l t'], [r.text, 'l ' + (r.kind === 'alert' ? (r.alert === 'resumed' ? 'pos' : 'neg') : 't')],
    ])), 'no refusals or alerts', 2);
  }
  function onPositions(msg) {
    const items = msg.items.slice().sort((a, b) => (a.symbol < b.symbol ? -1 : a.symbol > b.symbol ? 1 : a.agent_id - b.agent_id));
    fill($('positions-body'), items.map((p) => row([
      [p.agent, 'l'], [sym(p), 'l'], [qty(p.qty), signClass(p.qty)], cut(p.avg_price, 4), qty(p.mark), money(p.notional),
      [signed(p.unrealized), signClass(p.unrealized)], [signed(p.realized), signClass(p.realized)],
    ])), 'flat: no positions', 8);
    const open = msg.items.filter((p) => /[1-9]/.test(p.qty)).length;
    $('positions-count').textContent = open + ' open';
  }

  // ---------- stream ----------
  let ws = null;
  let attempt = 0;
  let retryTimer = null;

  function status(text, cls) {
    setPill($('conn'), text, cls);
    $('conn').dataset.state = cls === 'good' ? 'live' : 'down';
  }

  function connect() {
    clearTimeout(retryTimer);
    const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
    let socket;
    try {
      socket = new WebSocket(url);
    } catch (e) {
      scheduleReconnect();
      return;
    }
    ws = socket;
    status(attempt ? 'reconnecting' : 'connecting', 'warn');
    socket.onopen = () => { attempt = 0; st.lastMessageAt = performance.now(); status('live', 'good'); };
    socket.onmessage = (ev) => {
      st.lastMessageAt = performance.now();
      let msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      switch (msg.type) {
        case 'hello':
          if (st.instance !== msg.instance) { reset(); st.instance = msg.instance; }
          break;
        case 'snapshot': onSnapshot(msg); break;
        case 'positions': onPositions(msg); break;
        case 'equity': onEquity(msg); break;
        case 'fills': merge(st.fills, msg.items); renderFills(); break;
        case 'orders': merge(st.orders, msg.items); renderOrders(); break;
        case 'signals': merge(st.signals, msg.items); renderSignals(); break;
        case 'risk': merge(st.risk, msg.items); renderRisk(); break;
        default: break;
      }
    };
    socket.onclose = () => {
      if (ws !== socket) return;
      ws = null;
      scheduleReconnect();
    };
    socket.onerror = () => { /* onclose follows */ };
  }

  function scheduleReconnect() {
    attempt += 1;
    const delay = Math.min(10000, 500 * Math.pow(2, attempt - 1)) * (0.75 + Math.random() * 0.5);
    const until = performance.now() + delay;
    status('offline · retry in ' + Math.ceil(delay / 1000) + 's', 'bad');
    clearTimeout(retryTimer);
    const tickDown = () => {
      const left = until - performance.now();
      if (left <= 0) { connect(); return; }
      status('offline · retry in ' + Math.ceil(left / 1000) + 's', 'bad');
      retryTimer = setTimeout(tickDown, Math.min(1000, left));
    };
    retryTimer = setTimeout(tickDown, Math.min(1000, delay));
  }

  // A connection that went quiet (server hung, network path gone) is replaced.
  setInterval(() => {
    if (ws && ws.readyState === WebSocket.OPEN && performance.now() - st.lastMessageAt > STALE_MS) {
      const old = ws;
      ws = null;
      old.close();
      scheduleReconnect();
    }
  }, 1000);

  // ---------- controls ----------
  const ACTIONS = {
    kill: { title: 'Kill switch', desc: 'Cancels every resting order and refuses every new one until resumed.', confirm: 'Kill trading', cls: 'danger' },
    halt: { title: 'Halt trading', desc: 'Reduce-only: no new exposure; resting orders stay.', confirm: 'Halt', cls: 'warn' },
    resume: { title: 'Resume trading', desc: 'Lifts a kill, halt or drawdown halt.', confirm: 'Resume', cls: '' },
    flatten: {
      title: 'Flatten every position',
      desc: 'Cancels resting orders and closes every position with reduce-only IOC orders through the book (within the price band), '
        + 'retried until flat. New risk is refused while it runs; trading goes on afterwards unless you also kill.',
      confirm: 'Flatten everything', cls: 'danger',
    },
  };

  // The route an action posts to (a flatten with "also kill" is the kill switch's flatten option).
  function actionPath(action) {
    if (action === 'flatten' && $('also-kill').checked) return '/api/kill?flatten=true';
    return '/api/' + action;
  }

  function acceptedText(action, body) {
    let text = body.accepted + ' accepted (inbound seq ' + body.seq + ')';
    if (body.status === 'flattening') text += ': pass ' + body.pass + ', ' + body.orders + ' order(s) sent';
    else if (body.status === 'flat') text += ': nothing to close';
    return text;
  }
  let pending = null;

  function openDialog(action) {
    pending = action;
    const a = ACTIONS[action];
    $('control-title').textContent = a.title;
    $('control-desc').textContent = a.desc;
    const confirm = $('confirm-btn');
    confirm.textContent = a.confirm;
    confirm.className = 'btn ' + a.cls;
    confirm.disabled = false;
    $('also-kill').checked = false;
    $('also-kill-row').classList.toggle('hidden', action !== 'flatten');
    $('control-error').classList.add('hidden');
    $('token-input').value = sessionStorage.getItem(TOKEN_KEY) || '';
    const dialog = $('control-dialog');
    if (typeof dialog.showModal === 'function') dialog.showModal(); else dialog.setAttribute('open', '');
    $('token-input').focus();
  }

  function showError(text) {
    const e = $('control-error');
    e.textContent = text;
    e.classList.remove('hidden');
  }

  let toastTimer = null;
  function toast(text, bad) {
    const t = $('toast');
    t.textContent = text;
    t.className = 'toast' + (bad ? ' bad' : '');
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => t.classList.add('hidden'), 5000);
  }

  async function confirmAction() {
    const action = pending;
    const token = $('token-input').value.trim();
    if (!token) { showError('Enter the API token (SAPPHIRE_API_TOKEN).'); return; }
    const confirm = $('confirm-btn');
    confirm.disabled = true;
    try {
      const res = await fetch(actionPath(action), {
        method: 'POST',
        headers: { Authorization: 'Bearer ' + token },
        cache: 'no-store',
        credentials: 'omit',
      });
      let body = {};
      try { body = await res.json(); } catch (e) { /* not JSON */ }
      if (res.ok) {
        sessionStorage.setItem(TOKEN_KEY, token);
        $('control-dialog').close();
        toast(acceptedText(action, body));
      } else if (res.status === 401 || res.status === 403) {
        sessionStorage.removeItem(TOKEN_KEY);
        showError(res.status + ' ' + (res.status === 401 ? 'Unauthorized' : 'Forbidden') + ': ' + (body.error || 'refused'));
      } else {
        showError(res.status + ': ' + (body.error || res.statusText));
      }
    } catch (e) {
      showError('The server did not answer: ' + e.message);
    } finally {
      confirm.disabled = false;
    }
  }

  function init() {
    for (const b of document.querySelectorAll('[data-action]')) b.addEventListener('click', () => openDialog(b.dataset.action));
    $('cancel-btn').addEventListener('click', () => $('control-dialog').close());
    $('confirm-btn').addEventListener('click', confirmAction);
    $('token-input').addEventListener('keydown', (e) => { if (e.key === 'Enter') confirmAction(); });
    makeChart();
    renderFills(); renderSignals(); renderOrders(); renderRisk();
    onPositions({ items: [] });
    connect();
    // Redrawn at most four times a second, whatever the message rate.
    setInterval(drawChart, 250);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init); else init();
})();

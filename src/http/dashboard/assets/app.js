// volley dashboard: polls the JSON API every second and draws SVG charts. No framework,
// no build step; every value from the server reaches the page through textContent, never
// as markup (SMTP replies come from strangers).
(function () {
  'use strict';

  const KEY_STORAGE = 'volley.apiKey';
  const POLL_MS = 1000;
  const WINDOW_MS = 5 * 60 * 1000;
  const JOB_PAGE = 50;
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const OUTCOMES = ['delivered', 'deferred', 'bounced', 'expired', 'suppressed'];
  // Leased deliveries are either waiting in the engine (for a connection, a rate
  // permit, a throttled site) or on a connection with their replies awaited.
  const DEPTHS = ['ready', 'scheduled', 'waiting', 'in_flight'];
  const LABELS = {
    delivered: 'Delivered', deferred: 'Deferred', bounced: 'Bounced', expired: 'Expired',
    suppressed: 'Suppressed', ready: 'Ready', scheduled: 'Scheduled',
    waiting: 'Waiting in the engine', in_flight: 'On a connection',
    queue_wait: 'Queue wait', dns: 'DNS', connect: 'Connect', tls: 'TLS', ehlo: 'EHLO',
    transaction: 'Transaction (MAIL to final reply)', delivery: 'Delivery (whole)',
  };
  // Line styles besides colour, so that series stay apart without colour vision.
  const DASH = { deferred: 'dashed', bounced: 'dotted', scheduled: 'dashed', waiting: 'dotted' };

  const $ = (id) => document.getElementById(id);
  const int = new Intl.NumberFormat();
  const dec = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
  const ms = new Intl.NumberFormat(undefined, { maximumSignificantDigits: 3 });

  const state = {
    keyRequired: document.body.dataset.keyRequired === 'true',
    key: null,
    series: [],      // points, oldest first, at most five minutes
    lastT: 0,
    timer: null,
    running: false,
    generation: 0,   // bumps on every route change, so stale answers are dropped
    job: null,       // { id, after: [cursor of each page shown], next }
  };

  try {
    state.key = window.sessionStorage.getItem(KEY_STORAGE);
  } catch (_) {
    state.key = null; // storage disabled: the key is asked for on every load
  }

  // ---------------------------------------------------------------- API

  class Unauthorized extends Error {}

  async function api(path) {
    const headers = { Accept: 'application/json' };
    if (state.key) headers.Authorization = 'Bearer ' + state.key;
    const response = await fetch(path, { headers, cache: 'no-store' });
    if (response.status === 401) throw new Unauthorized('unauthorized');
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      const message = body && body.error && body.error.message;
      const error = new Error(message || 'HTTP ' + response.status);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  // ---------------------------------------------------------------- small DOM helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'text') node.textContent = v;
      else node.setAttribute(k, String(v));
    }
    return node;
  }

  function setText(id, text) {
    const node = $(id);
    if (node && node.textContent !== text) node.textContent = text;
  }

  function pill(kind) {
    return el('span', { class: 'pill st-' + kind, text: kind });
  }

  function timeOf(msSinceEpoch) {
    return new Date(msSinceEpoch).toLocaleTimeString();
  }

  function setStatus(text, bad) {
    const status = $('status');
    if (status.textContent !== text) status.textContent = text;
    status.classList.toggle('bad', Boolean(bad));
  }

  // ---------------------------------------------------------------- charts

  // The smallest "nice" number (1, 2, 5 × 10^n) at or above v.
  function niceCeil(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function chartBox(node) {
    const width = Math.max(240, Math.round(node.getBoundingClientRect().width || 600));
    const height = 190;
    node.setAttribute('viewBox', `0 0 ${width} ${height}`);
    node.replaceChildren();
    return { width, height, left: 46, right: 10, top: 10, bottom: 24 };
  }

  function yAxis(node, box, max, format) {
    const plotH = box.height - box.top - box.bottom;
    for (const f of [0, 0.5, 1]) {
      const y = box.top + plotH * (1 - f);
      node.append(svg('line', {
        class: f === 0 ? 'axis' : 'grid-line',
        x1: box.left, x2: box.width - box.right, y1: y, y2: y,
      }));
      node.append(svg('text', {
        x: box.left - 6, y: y + 4, 'text-anchor': 'end', text: format(max * f),
      }));
    }
  }

  // Lines over the last five minutes. `series`: [{ key, values: [number] }], one value per
  // point of `times` (Unix ms).
  function drawLines(node, times, series, now) {
    const box = chartBox(node);
    const plotW = box.width - box.left - box.right;
    const plotH = box.height - box.top - box.bottom;
    let max = 0;
    for (const s of series) for (const v of s.values) max = Math.max(max, v);
    max = Math.max(2, niceCeil(max)); // counts: keep the middle grid line on a whole number
    yAxis(node, box, max, (v) => int.format(Math.round(v)));
    // The time axis grows with the data from one minute up to five, so that a freshly
    // started volley does not show all its traffic squeezed against the right edge.
    const end = now;
    const span = Math.min(WINDOW_MS, Math.max(60000, times.length ? end - times[0] : 0));
    const start = end - span;
    const x = (t) => box.left + ((t - start) / span) * plotW;
    const y = (v) => box.top + plotH * (1 - v / max);
    const labels = Math.max(2, Math.min(6, Math.floor(plotW / 56)));
    const step = [10000, 15000, 20000, 30000, 60000, 120000, 150000]
      .find((s) => span / s <= labels) || 300000;
    for (let ago = 0; ago <= span; ago += step) {
      const label = ago === 0 ? 'now' : step < 60000 ? `−${ago / 1000} s` : `−${ago / 60000} min`;
      node.append(svg('text', {
        x: x(end - ago), y: box.height - 6,
        'text-anchor': ago === 0 ? 'end' : x(end - ago) - box.left < 30 ? 'start' : 'middle',
        text: label,
      }));
      node.append(svg('line', {
        class: 'grid-line', x1: x(end - ago), x2: x(end - ago), y1: box.top, y2: box.top + plotH,
      }));
    }
    if (times.length === 0) {
      node.append(svg('text', {
        class: 'no-data', x: box.left + plotW / 2, y: box.top + plotH / 2, 'text-anchor': 'middle',
        text: 'Waiting for the first samples…',
      }));
      return;
    }
    for (const s of series) {
      let d = '';
      let area = '';
      s.values.forEach((v, i) => {
        const t = Math.max(times[i], start);
        const px = x(t).toFixed(1);
        const py = y(v).toFixed(1);
        d += (i === 0 ? 'M' : 'L') + px + ' ' + py;
        area += (i === 0 ? `M${px} ${y(0).toFixed(1)}L` : 'L') + px + ' ' + py;
      });
      if (times.length === 1) d += 'h1'; // a single point still shows
      if (s.fill) {
        area += `L${x(times[times.length - 1]).toFixed(1)} ${y(0).toFixed(1)}Z`;
        node.append(svg('path', { class: `area s-${s.key}`, d: area }));
      }
      const dash = DASH[s.key] ? ' ' + DASH[s.key] : '';
      node.append(svg('path', { class: `line s-${s.key}${dash}`, d, 'data-series': s.key }));
    }
  }

  function drawHistogram(node, buckets) {
    const box = chartBox(node);
    box.bottom = 34;
    const plotW = box.width - box.left - box.right;
    const plotH = box.height - box.top - box.bottom;
    const total = buckets.reduce((n, b) => n + b[1], 0);
    // One unit on the whole axis: seconds once the buckets reach a second.
    if (total === 0) {
      node.append(svg('text', {
        class: 'no-data', x: box.left + plotW / 2, y: box.top + plotH / 2, 'text-anchor': 'middle',
        text: 'No samples yet',
      }));
      return;
    }
    // Leading empty buckets carry no information: start at the first one with samples.
    const first = Math.max(0, buckets.findIndex((b) => b[1] > 0) - 1);
    const shown = buckets.slice(first);
    const max = Math.max(2, niceCeil(Math.max(...shown.map((b) => b[1]))));
    const seconds = shown[shown.length - 1][0] >= 1000;
    const label = (upper) => (seconds ? ms.format(upper / 1000) : ms.format(upper));
    yAxis(node, box, max, (v) => int.format(Math.round(v)));
    const slot = plotW / shown.length;
    const every = Math.ceil(shown.length / Math.max(1, Math.floor(plotW / 44)));
    shown.forEach(([upper, count], i) => {
      const h = (count / max) * plotH;
      const bx = box.left + i * slot + 1;
      const bar = svg('rect', {
        class: 'bar', x: bx.toFixed(1), y: (box.top + plotH - h).toFixed(1),
        width: Math.max(1, slot - 2).toFixed(1), height: h.toFixed(1),
      });
      bar.append(svg('title', { text: `≤ ${ms.format(upper)} ms: ${int.format(count)}` }));
      node.append(bar);
      if (i % every === 0) {
        node.append(svg('text', {
          x: (bx + slot / 2).toFixed(1), y: box.height - 18, 'text-anchor': 'middle',
          text: label(upper),
        }));
      }
    });
    node.append(svg('text', {
      x: box.left + plotW / 2, y: box.height - 3, 'text-anchor': 'middle',
      text: seconds ? 'upper bound (s)' : 'upper bound (ms)',
    }));
  }

  function legend(id, keys) {
    const list = $(id);
    if (list.childElementCount) return;
    for (const key of keys) {
      const dash = DASH[key] ? ' ' + DASH[key] : '';
      list.append(el('li', null, el('span', { class: `swatch sw-${key}${dash}`, 'aria-hidden': 'true' }), LABELS[key]));
    }
  }

  // ---------------------------------------------------------------- overview

  function mergeSeries(points) {
    for (const p of points) {
      if (p.t > state.lastT) {
        state.series.push(p);
        state.lastT = p.t;
      }
    }
    const cutoff = state.lastT - WINDOW_MS;
    while (state.series.length && state.series[0].t < cutoff) state.series.shift();
  }

  function recentRate() {
    const last = state.series.slice(-10);
    if (!last.length) return 0;
    const n = last.reduce((sum, p) => sum + OUTCOMES.reduce((s, k) => s + p[k], 0), 0);
    return n / last.length;
  }

  function renderTotals(stats) {
    for (const k of OUTCOMES) setText('total-' + k, int.format(stats.totals[k]));
    setText('total-complained', int.format(stats.totals.complained));
    setText('late-bounced', int.format(stats.late.bounced));
    setText('current-rate', dec.format(recentRate()));
    for (const k of DEPTHS) setText('depth-' + k, int.format(stats.depth[k]));
  }

  function renderCharts(stats) {
    const times = state.series.map((p) => p.t);
    const now = state.lastT || stats.now;
    const total = state.series.map((p) => OUTCOMES.reduce((s, k) => s + p[k], 0));
    drawLines($('chart-rate'), times, [{ key: 'total', values: total, fill: true }], now);
    drawLines($('chart-outcomes'), times,
      OUTCOMES.map((k) => ({ key: k, values: state.series.map((p) => p[k]) })), now);
    drawLines($('chart-depth'), times,
      DEPTHS.map((k) => ({ key: k, values: state.series.map((p) => p[k]) })), now);
    setText('histogram-stage', LABELS[stats.histogram.stage] || stats.histogram.stage);
    drawHistogram($('chart-histogram'), stats.histogram.buckets);
    $('chart-rate').setAttribute('aria-description',
      `Latest: ${dec.format(recentRate())} messages per second over 10 seconds`);
  }

  function renderSites(sites, now) {
    const body = $('sites').tBodies[0];
    const sorted = sites.slice().sort((a, b) =>
      (b.rate_per_s - a.rate_per_s) || (b.delivered + b.deferred + b.bounced) -
      (a.delivered + a.deferred + a.bounced) || a.site.localeCompare(b.site));
    body.replaceChildren(...sorted.map((s) => {
      const paused = s.paused_until && s.paused_until > now;
      const throttle = paused
        ? el('span', null, pill('paused'), ' until ', el('time', {
          datetime: new Date(s.paused_until).toISOString(), text: timeOf(s.paused_until),
        }))
        : (s.allowed < s.limit ? el('span', { class: 'st-deferred', text: 'slowed' }) : el('span', { class: 'muted', text: 'normal' }));
      return el('tr', null,
        el('th', { scope: 'row' }, s.site, (s.provider || (s.domains && s.domains.length))
          ? el('div', { class: 'muted', text: [s.provider, (s.domains || []).join(', ')].filter(Boolean).join(' · ') })
          : ''),
        el('td', { class: 'num', text: `${int.format(s.open)} / ${int.format(s.allowed)} / ${int.format(s.limit)}` }),
        el('td', { class: 'num', text: dec.format(s.rate_per_s) }),
        el('td', { class: 'num', text: int.format(s.delivered) }),
        el('td', { class: 'num', text: int.format(s.deferred) }),
        el('td', { class: 'num', text: int.format(s.bounced) }),
        el('td', null, throttle),
        el('td', { class: 'reply', text: s.last_reply || '–' }));
    }));
    $('sites-empty').hidden = sites.length > 0;
  }

  function renderStages(stages) {
    const body = $('stages').tBodies[0];
    body.replaceChildren(...stages.map((s) => {
      const v = (x) => (s.count ? ms.format(x) : '–');
      return el('tr', null,
        el('th', { scope: 'row', text: LABELS[s.stage] || s.stage }),
        el('td', { class: 'num', text: int.format(s.count) }),
        el('td', { class: 'num', text: v(s.p50) }),
        el('td', { class: 'num', text: v(s.p90) }),
        el('td', { class: 'num', text: v(s.p99) }),
        el('td', { class: 'num', text: v(s.p999) }),
        el('td', { class: 'num', text: v(s.max) }));
    }));
  }

  function progressBar(counts) {
    const total = Math.max(1, counts.total);
    const done = counts.delivered + counts.bounced + counts.expired + counts.suppressed;
    const track = el('div', {
      class: 'bar-track', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': counts.total,
      'aria-valuenow': done,
      'aria-valuetext': `${int.format(done)} of ${int.format(counts.total)} done: ` +
        `${int.format(counts.delivered)} delivered, ${int.format(counts.bounced)} bounced, ` +
        `${int.format(counts.deferred)} deferred`,
    });
    for (const k of ['delivered', 'bounced', 'expired', 'suppressed', 'deferred']) {
      if (!counts[k]) continue;
      const seg = el('span', { class: 'seg-' + k });
      seg.style.width = (100 * counts[k] / total).toFixed(2) + '%';
      track.append(seg);
    }
    const pct = Math.floor((100 * done) / total);
    return el('div', null, track, el('span', { class: 'bar-label', text: `${pct}% · ${int.format(done)}/${int.format(counts.total)}` }));
  }

  function renderJobs(jobs) {
    const body = $('jobs').tBodies[0];
    body.replaceChildren(...jobs.map((j) => el('tr', null,
      el('th', { scope: 'row' }, el('a', { href: '#/jobs/' + encodeURIComponent(j.id), class: 'job-link' }, el('code', { text: j.id }))),
      el('td', { text: j.kind }),
      el('td', null, pill(j.state)),
      el('td', null, el('time', { datetime: j.created, text: new Date(j.created).toLocaleString() })),
      el('td', null, progressBar(j.counts)),
      el('td', { class: 'num', text: int.format(j.counts.delivered) }),
      el('td', { class: 'num', text: int.format(j.counts.deferred) }),
      el('td', { class: 'num', text: int.format(j.counts.bounced) }))));
    $('jobs-empty').hidden = jobs.length > 0;
  }

  function renderCluster(cluster) {
    setText('cluster-backend', cluster.backend);
    setText('cluster-workers', int.format(cluster.totals.workers));
    setText('cluster-in-flight', int.format(cluster.totals.in_flight));
    setText('cluster-connections', int.format(cluster.totals.connections));
    const body = $('workers').tBodies[0];
    body.replaceChildren(...cluster.workers.map((w) => {
      const open = Object.values(w.connections).reduce((a, b) => a + b, 0);
      const sites = Object.keys(w.connections).length;
      const name = w.id === cluster.this_worker ? `${w.id} (this one)` : w.id;
      return el('tr', null,
        el('th', { scope: 'row' }, el('code', { text: name })),
        el('td', { text: w.host }),
        el('td', { text: w.version }),
        el('td', null, el('time', { datetime: w.started, text: new Date(w.started).toLocaleString() })),
        el('td', null, el('time', { datetime: w.seen, text: new Date(w.seen).toLocaleTimeString() })),
        el('td', { class: 'num', text: int.format(w.in_flight) }),
        el('td', { class: 'num', text: `${int.format(open)} to ${int.format(sites)} sites` }));
    }));
  }

  async function refreshOverview(generation) {
    const since = state.lastT;
    const [stats, jobs, cluster] = await Promise.all([
      api('/v1/dashboard/stats' + (since ? '?since=' + since : '')),
      api('/v1/dashboard/jobs?limit=10'),
      api('/v1/cluster'),
    ]);
    if (generation !== state.generation) return;
    renderCluster(cluster);
    mergeSeries(stats.series);
    renderTotals(stats);
    renderCharts(stats);
    renderSites(stats.sites, stats.now);
    renderStages(stats.stages);
    renderJobs(jobs.jobs);
  }

  // ---------------------------------------------------------------- job view

  function renderJob(job) {
    setText('job-id', job.id);
    setText('job-state', job.state);
    setText('job-meta', `${job.kind} · created ${new Date(job.created).toLocaleString()}`);
    for (const k of ['total', 'delivered', 'deferred', 'bounced', 'expired', 'suppressed', 'queued']) {
      setText('job-' + k, int.format(job.counts[k]));
    }
    $('job-progress').replaceChildren(progressBar(job.counts));
    const body = $('recipients').tBodies[0];
    body.replaceChildren(...job.recipients.map((r) => el('tr', null,
      el('td', { class: 'num', text: int.format(r.index + 1) }),
      el('th', { scope: 'row', text: r.to }),
      el('td', null, pill(r.state)),
      el('td', { class: 'num', text: int.format(r.attempts) }),
      el('td', { class: 'reply', text: r.last_reply || '–' }))));
    state.job.next = job.next_after;
    const page = state.job.after.length;
    const first = job.recipients.length ? job.recipients[0].index + 1 : 0;
    const last = job.recipients.length ? job.recipients[job.recipients.length - 1].index + 1 : 0;
    setText('page-info', job.recipients.length
      ? `Recipients ${int.format(first)}–${int.format(last)} of ${int.format(job.counts.total)}`
      : 'No recipients on this page');
    $('page-prev').disabled = page <= 1;
    $('page-next').disabled = job.next_after === null || job.next_after === undefined;
  }

  async function refreshJob(generation) {
    const job = state.job;
    const after = job.after[job.after.length - 1];
    const query = `?limit=${JOB_PAGE}` + (after === null ? '' : `&after=${after}`);
    try {
      const answer = await api('/v1/jobs/' + encodeURIComponent(job.id) + query);
      if (generation !== state.generation) return;
      setText('job-error', '');
      renderJob(answer);
    } catch (error) {
      if (error.status === 404) {
        setText('job-error', 'No such job.');
        return;
      }
      throw error;
    }
  }

  // ---------------------------------------------------------------- polling and routes

  function route() {
    const match = /^#\/jobs\/([0-9A-Za-z]{26})$/.exec(window.location.hash);
    state.generation += 1;
    if (match) {
      state.job = { id: match[1].toUpperCase(), after: [null], next: null };
      $('overview').hidden = true;
      $('job-view').hidden = false;
      $('recipients').tBodies[0].replaceChildren();
      setText('job-id', state.job.id);
      document.title = `Job ${state.job.id} · volley`;
      $('job-title').focus();
    } else {
      state.job = null;
      $('job-view').hidden = true;
      $('overview').hidden = false;
      document.title = 'volley dashboard';
    }
    poll();
  }

  function needKey(message) {
    stop();
    state.key = null;
    try { window.sessionStorage.removeItem(KEY_STORAGE); } catch (_) { /* storage disabled */ }
    $('overview').hidden = true;
    $('job-view').hidden = true;
    $('key-view').hidden = false;
    $('forget-key').hidden = true;
    setText('key-error', message || '');
    setStatus('API key needed', true);
    $('api-key').focus();
  }

  function stop() {
    state.running = false;
    if (state.timer) window.clearTimeout(state.timer);
    state.timer = null;
  }

  async function poll() {
    if (state.timer) window.clearTimeout(state.timer);
    state.timer = null;
    if (!state.running) return;
    const generation = state.generation;
    try {
      if (state.job) await refreshJob(generation);
      else await refreshOverview(generation);
      setStatus('Live');
      setText('updated', new Date().toLocaleTimeString());
    } catch (error) {
      if (error instanceof Unauthorized) {
        needKey('The API refused this key.');
        return;
      }
      setStatus('Cannot reach volley — retrying', true);
    }
    if (state.running && generation === state.generation) {
      state.timer = window.setTimeout(poll, POLL_MS);
    }
  }

  function start() {
    $('key-view').hidden = true;
    $('forget-key').hidden = !state.key;
    state.running = true;
    route();
  }

  function init() {
    legend('outcomes-legend', OUTCOMES);
    legend('depth-legend', DEPTHS);
    $('key-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const key = $('api-key').value.trim();
      if (!key) return;
      state.key = key;
      try { window.sessionStorage.setItem(KEY_STORAGE, key); } catch (_) { /* tab only */ }
      $('api-key').value = '';
      setText('key-error', '');
      start();
    });
    $('forget-key').addEventListener('click', () => needKey(''));
    $('page-next').addEventListener('click', () => {
      if (!state.job || state.job.next === null || state.job.next === undefined) return;
      state.job.after.push(state.job.next);
      state.generation += 1;
      poll();
    });
    $('page-prev').addEventListener('click', () => {
      if (!state.job || state.job.after.length <= 1) return;
      state.job.after.pop();
      state.generation += 1;
      poll();
    });
    window.addEventListener('hashchange', () => {
      if (state.running) route();
    });
    if (state.keyRequired && !state.key) needKey('');
    else start();
  }

  init();
})();

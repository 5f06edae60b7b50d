/*
 * Lumen dashboard: reads the admin API with the admin token and draws it. Plain JavaScript, no
 * build step; charts by the vendored Chart.js (window.Chart).
 *
 * The token lives in this script's memory and in sessionStorage (this tab only, gone when the tab
 * closes); it is sent only as an Authorization header to this origin's /admin API and never put
 * in a URL. Everything from the API is rendered with textContent, never as HTML.
 *
 * Data: GET /admin/keys; per tenant GET /admin/usage (day × model rows) and
 * /admin/usage?group_by=key; per key GET /admin/usage/records; GET /admin/health;
 * GET /admin/audit/head (and /admin/audit/verify on demand). Fields the API may add later
 * (`saved*`, `route`, `fallbacks`, anything else on a record) are shown when present.
 */
(function () {
  "use strict";

  const TOKEN_KEY = "lumen.dashboard.adminToken";
  const MAX_KEYS_FOR_RECORDS = 50; // newest keys whose records are fetched
  const RECORDS_PER_KEY = 50;
  const LOG_ROWS = 200;
  const FALLBACK_ROWS = 25;
  const CONCURRENCY = 4;
  const DAY_MS = 86400000;
  const PALETTE = [
    "#4f46e5", "#0ea5e9", "#10b981", "#f59e0b", "#ef4444",
    "#8b5cf6", "#14b8a6", "#f97316", "#64748b", "#ec4899",
  ];
  const COST_COLOR = "#111827";

  let token = null;
  let loads = 0;
  const charts = {};
  // Exposed for tests and for poking at in the console; never holds the token.
  const view = { keys: [], byDay: null, byModel: [], byKey: [], totals: null, records: [], health: [], audit: null };
  window.lumenDashboard = { view, charts };

  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- API

  class ApiFailure extends Error {
    constructor(status, message, code) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path) {
    let res;
    try {
      res = await fetch(path, {
        headers: { Authorization: "Bearer " + token, Accept: "application/json" },
        cache: "no-store",
        credentials: "omit",
        referrerPolicy: "no-referrer",
      });
    } catch (e) {
      throw new ApiFailure(0, "the gateway did not answer (" + e.message + ")", "network");
    }
    const text = await res.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch (_) {
      body = null;
    }
    if (!res.ok) {
      const err = (body && body.error) || {};
      throw new ApiFailure(res.status, err.message || res.status + " " + res.statusText, err.code);
    }
    return body;
  }

  /** Maps `items` through async `fn`, at most `n` at a time, keeping the order. */
  async function pool(items, n, fn) {
    const out = new Array(items.length);
    let next = 0;
    async function worker() {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i], i);
      }
    }
    await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
    return out;
  }

  const enc = encodeURIComponent;

  // ---------------------------------------------------------------- formatting

  function isoDay(ms) {
    return new Date(ms).toISOString().slice(0, 10);
  }

  function daysBetween(from, to) {
    const out = [];
    for (let t = Date.parse(from + "T00:00:00Z"); t <= Date.parse(to + "T00:00:00Z"); t += DAY_MS) {
      out.push(isoDay(t));
    }
    return out;
  }

  function fmtInt(n) {
    return typeof n === "number" && isFinite(n) ? Math.round(n).toLocaleString("en-US") : "–";
  }

  function fmtUsd(v) {
    if (typeof v !== "number" || !isFinite(v)) return "–";
    if (v === 0) return "$0";
    const a = Math.abs(v);
    if (a >= 1) return (v < 0 ? "-$" : "$") + a.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
    const decimals = Math.min(9, Math.ceil(-Math.log10(a)) + 2);
    return (v < 0 ? "-$" : "$") + a.toFixed(decimals);
  }

  /** Dollars for an axis tick: two significant digits below a dollar. */
  function fmtUsdTick(v) {
    if (typeof v !== "number" || !isFinite(v) || v === 0) return "$0";
    const a = Math.abs(v);
    if (a >= 1) return fmtUsd(v);
    return (v < 0 ? "-$" : "$") + a.toFixed(Math.min(9, Math.ceil(-Math.log10(a)) + 1));
  }

  function fmtMs(v) {
    if (typeof v !== "number" || !isFinite(v)) return "–";
    return v >= 100 ? Math.round(v).toLocaleString("en-US") + " ms" : v.toFixed(1) + " ms";
  }

  function fmtTime(ms) {
    if (typeof ms !== "number" || !ms) return "–";
    const d = new Date(ms);
    return d.toLocaleDateString("en-CA") + " " + d.toLocaleTimeString("en-GB");
  }

  /** The time of day for today's times, else the date and time. */
  function fmtTimeShort(ms) {
    if (typeof ms !== "number" || !ms) return "–";
    const d = new Date(ms);
    return d.toDateString() === new Date().toDateString() ? d.toLocaleTimeString("en-GB") : fmtTime(ms);
  }

  function fmtAgo(ms) {
    if (typeof ms !== "number" || !ms) return "–";
    const s = Math.round((Date.now() - ms) / 1000);
    if (s < 0) return "in " + fmtDuration(-s);
    return fmtDuration(s) + " ago";
  }

  function fmtDuration(s) {
    if (s < 60) return s + " s";
    if (s < 3600) return Math.round(s / 60) + " min";
    if (s < 86400) return Math.round(s / 3600) + " h";
    return Math.round(s / 86400) + " d";
  }

  /** Any value as short text: arrays joined, objects as compact JSON. */
  function fmtAny(v) {
    if (v === null || v === undefined || v === "") return "–";
    if (Array.isArray(v)) return v.length ? v.map(fmtAny).join(", ") : "–";
    if (typeof v === "object") return JSON.stringify(v);
    if (typeof v === "boolean") return v ? "yes" : "no";
    return String(v);
  }

  function badge(text, tone) {
    const s = document.createElement("span");
    s.className = "badge " + tone;
    s.textContent = text;
    return s;
  }

  // ---------------------------------------------------------------- optional fields

  /** Money saved by routing on a usage row or record, in dollars, or null when not reported. */
  function savedOf(o) {
    if (!o || typeof o !== "object") return null;
    for (const f of ["saved_usd", "saved_cost_usd"]) if (typeof o[f] === "number") return o[f];
    if (typeof o.saved_nanos === "number") return o.saved_nanos / 1e9;
    if (typeof o.saved === "number") return o.saved;
    if (o.saved && typeof o.saved === "object") {
      for (const f of ["usd", "cost_usd", "amount_usd"]) if (typeof o.saved[f] === "number") return o.saved[f];
      if (typeof o.saved.nanos === "number") return o.saved.nanos / 1e9;
    }
    return null;
  }

  /** A record's cost in dollars. */
  function costOf(r) {
    if (typeof r.cost_usd === "number") return r.cost_usd;
    if (typeof r.cost_nanos === "number") return r.cost_nanos / 1e9;
    if (typeof r.cost === "number") return r.cost;
    return null;
  }

  /** `route` as {tier, reason, text}: a string like x-lumen-route ("k=v; k=v") or an object. */
  function routeOf(r) {
    const route = r.route;
    if (route === undefined || route === null || route === "") return null;
    if (typeof route === "string") {
      const parts = {};
      for (const p of route.split(";")) {
        const i = p.indexOf("=");
        if (i > 0) parts[p.slice(0, i).trim()] = p.slice(i + 1).trim();
      }
      return { tier: parts.tier || null, reason: parts.reason || route, text: route };
    }
    if (typeof route === "object") {
      return {
        tier: route.tier || null,
        reason: route.reason || route.why || JSON.stringify(route),
        text: JSON.stringify(route),
      };
    }
    return { tier: null, reason: String(route), text: String(route) };
  }

  /** A record's fallback attempts as a list of strings (empty when none or not reported). */
  function fallbacksOf(r) {
    const f = r.fallbacks;
    if (f === undefined || f === null || f === "") return [];
    if (typeof f === "string") return f.split(",").map((s) => s.trim()).filter(Boolean);
    if (Array.isArray(f)) {
      return f.map((x) => {
        if (typeof x === "string") return x;
        if (x && typeof x === "object") {
          const who = [x.provider, x.model].filter(Boolean).join("/");
          const what = x.outcome || x.error || x.status || x.reason;
          return who ? (what !== undefined ? who + "=" + what : who) : JSON.stringify(x);
        }
        return String(x);
      });
    }
    return [fmtAny(f)];
  }

  // ---------------------------------------------------------------- tables

  /**
   * Fills a table: `columns` are {label, get(row) → string | Node, num?, wrap?}.
   */
  function renderTable(table, columns, rows, emptyText) {
    const thead = table.tHead;
    const tbody = table.tBodies[0];
    thead.textContent = "";
    tbody.textContent = "";
    const hr = thead.insertRow();
    for (const c of columns) {
      const th = document.createElement("th");
      th.textContent = c.label;
      if (c.num) th.className = "num";
      if (c.field) th.dataset.field = c.field;
      hr.appendChild(th);
    }
    if (!rows.length) {
      const td = tbody.insertRow().insertCell();
      td.colSpan = columns.length;
      td.className = "empty";
      td.textContent = emptyText;
      return;
    }
    for (const row of rows) {
      const tr = tbody.insertRow();
      for (const c of columns) {
        const td = tr.insertCell();
        const v = c.get(row);
        if (v instanceof Node) td.appendChild(v);
        else td.textContent = v === undefined || v === null ? "–" : String(v);
        if (c.num) td.className = "num";
        if (c.wrap) td.className = "wrap";
      }
    }
  }

  // ---------------------------------------------------------------- charts

  function baseOptions() {
    return {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      interaction: { mode: "index", intersect: false },
      plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } },
    };
  }

  function draw(id, config) {
    if (charts[id]) charts[id].destroy();
    charts[id] = new window.Chart($(id), config);
  }

  function drawDayChart(days, models, byDay) {
    const datasets = models.map((m, i) => ({
      type: "bar",
      label: m,
      data: days.map((d) => (byDay[d] && byDay[d].models[m] ? byDay[d].models[m].requests : 0)),
      backgroundColor: PALETTE[i % PALETTE.length],
      stack: "requests",
      yAxisID: "y",
      order: 2,
    }));
    datasets.push({
      type: "line",
      label: "Spend (USD)",
      data: days.map((d) => (byDay[d] ? byDay[d].cost : 0)),
      borderColor: COST_COLOR,
      backgroundColor: COST_COLOR,
      pointRadius: 2,
      tension: 0,
      yAxisID: "y1",
      order: 1,
    });
    const opts = baseOptions();
    opts.scales = {
      x: { stacked: true, grid: { display: false } },
      y: { stacked: true, beginAtZero: true, title: { display: true, text: "requests" }, ticks: { precision: 0 } },
      y1: { position: "right", beginAtZero: true, grid: { drawOnChartArea: false }, title: { display: true, text: "USD" }, ticks: { maxTicksLimit: 6, callback: (v) => fmtUsdTick(v) } },
    };
    opts.plugins.tooltip = { callbacks: { label: (c) => c.dataset.yAxisID === "y1" ? "Spend: " + fmtUsd(c.parsed.y) : c.dataset.label + ": " + fmtInt(c.parsed.y) } };
    draw("chart-day", { type: "bar", data: { labels: days.map((d) => d.slice(5)), datasets }, options: opts });
  }

  function drawBreakdown(id, rows, labelOf) {
    const opts = baseOptions();
    opts.indexAxis = "y";
    opts.interaction = { mode: "nearest", axis: "y", intersect: false };
    opts.scales = {
      x: { beginAtZero: true, position: "bottom", title: { display: true, text: "requests" }, ticks: { precision: 0 } },
      x1: { beginAtZero: true, position: "top", grid: { drawOnChartArea: false }, title: { display: true, text: "USD" }, ticks: { maxTicksLimit: 4, maxRotation: 0, callback: (v) => fmtUsdTick(v) } },
      y: { grid: { display: false } },
    };
    opts.plugins.tooltip = { callbacks: { label: (c) => c.dataset.xAxisID === "x1" ? "Spend: " + fmtUsd(c.parsed.x) : c.dataset.label + ": " + fmtInt(c.parsed.x) } };
    const datasets = [
      { label: "Requests", data: rows.map((r) => r.requests), backgroundColor: PALETTE[0], xAxisID: "x" },
      { label: "Spend (USD)", data: rows.map((r) => r.cost_usd), backgroundColor: PALETTE[3], xAxisID: "x1" },
    ];
    if (rows.some((r) => r.saved !== null)) {
      datasets.push({ label: "Saved (USD)", data: rows.map((r) => r.saved || 0), backgroundColor: PALETTE[2], xAxisID: "x1" });
    }
    draw(id, { type: "bar", data: { labels: rows.map(labelOf), datasets }, options: opts });
  }

  // ---------------------------------------------------------------- aggregation

  function emptySums() {
    return { requests: 0, errors: 0, prompt_tokens: 0, completion_tokens: 0, cached_tokens: 0, cost_usd: 0, saved: null };
  }

  function addRow(sums, row) {
    for (const f of ["requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd"]) {
      if (typeof row[f] === "number") sums[f] += row[f];
    }
    const s = savedOf(row);
    if (s !== null) sums.saved = (sums.saved || 0) + s;
  }

  function aggregate(perTenant) {
    const byDay = {};
    const byModel = new Map();
    const byKey = new Map();
    const totals = emptySums();
    for (const t of perTenant) {
      if (t.total) addRow(totals, t.total);
      for (const row of t.dayModel) {
        const day = row.day || "unknown";
        const model = row.model || "unknown";
        byDay[day] = byDay[day] || { models: {}, cost: 0, saved: null };
        byDay[day].models[model] = byDay[day].models[model] || emptySums();
        addRow(byDay[day].models[model], row);
        if (typeof row.cost_usd === "number") byDay[day].cost += row.cost_usd;
        if (!byModel.has(model)) byModel.set(model, Object.assign(emptySums(), { model }));
        addRow(byModel.get(model), row);
      }
      for (const row of t.byKey) {
        const id = row.key_id || "unknown";
        if (!byKey.has(id)) byKey.set(id, Object.assign(emptySums(), { key_id: id }));
        addRow(byKey.get(id), row);
      }
    }
    const sortDesc = (a, b) => b.requests - a.requests || b.cost_usd - a.cost_usd;
    return { byDay, byModel: [...byModel.values()].sort(sortDesc), byKey: [...byKey.values()].sort(sortDesc), totals };
  }

  // ---------------------------------------------------------------- sections

  function keyName(id) {
    const k = view.keys.find((x) => x.id === id);
    return k ? (k.name ? k.name + " (" + id + ")" : id) : id;
  }

  function shortKeyName(id) {
    const k = view.keys.find((x) => x.id === id);
    return k && k.name ? k.name : id;
  }

  function renderKpis() {
    const t = view.totals;
    $("kpi-requests").textContent = fmtInt(t.requests);
    $("kpi-errors").textContent = fmtInt(t.errors) + (t.errors === 1 ? " error" : " errors");
    $("kpi-tokens").textContent = fmtInt(t.prompt_tokens + t.completion_tokens);
    $("kpi-tokens-split").textContent =
      fmtInt(t.prompt_tokens) + " in · " + fmtInt(t.completion_tokens) + " out · " + fmtInt(t.cached_tokens) + " cached";
    $("kpi-cost").textContent = fmtUsd(t.cost_usd);
    $("kpi-cost-sub").textContent = t.requests ? fmtUsd(t.cost_usd / t.requests) + " per request" : "";
    const saved = t.saved !== null ? t.saved : sumSavedFromRecords();
    $("kpi-saved-card").hidden = saved === null;
    if (saved !== null) $("kpi-saved").textContent = fmtUsd(saved);
    $("kpi-keys").textContent = fmtInt(view.keys.length);
    const tenants = new Set(view.keys.map((k) => k.tenant || k.id));
    $("kpi-tenants").textContent = fmtInt(tenants.size) + (tenants.size === 1 ? " tenant" : " tenants");
    const up = view.health.filter((h) => availabilityState(h) === "up").length;
    $("kpi-health").textContent = view.health.length ? up + " / " + view.health.length + " up" : "–";
    const open = view.health.filter((h) => breakerState(h) !== "closed").length;
    $("kpi-health-sub").textContent = view.health.length ? open + (open === 1 ? " breaker" : " breakers") + " not closed" : "no calls recorded yet";
  }

  function sumSavedFromRecords() {
    let any = false;
    let s = 0;
    for (const r of view.records) {
      const v = savedOf(r);
      if (v !== null) {
        any = true;
        s += v;
      }
    }
    return any ? s : null;
  }

  function renderCharts(days) {
    const models = view.byModel.map((m) => m.model);
    drawDayChart(days, models, view.byDay);
    drawBreakdown("chart-model", view.byModel, (r) => r.model);
    drawBreakdown("chart-key", view.byKey, (r) => shortKeyName(r.key_id));
  }

  function outcomeBadge(o) {
    if (o === undefined || o === null) return "–";
    const s = fmtAny(o);
    return badge(s, s === "ok" ? "ok" : s === "client_disconnected" ? "warn" : "bad");
  }

  function renderRoutes() {
    const groups = new Map();
    let anyRoute = false;
    for (const r of view.records) {
      const route = routeOf(r);
      if (route) anyRoute = true;
      const k = [r.model, r.provider, route ? route.tier : "", route ? route.reason : ""].join("\u0000");
      if (!groups.has(k)) groups.set(k, { model: r.model, provider: r.provider, route, count: 0, last: 0, fallbacks: 0, saved: null });
      const g = groups.get(k);
      g.count += 1;
      g.last = Math.max(g.last, r.time_ms || 0);
      if (fallbacksOf(r).length) g.fallbacks += 1;
      const s = savedOf(r);
      if (s !== null) g.saved = (g.saved || 0) + s;
    }
    const rows = [...groups.values()].sort((a, b) => b.count - a.count || b.last - a.last);
    const fallbacksReported = view.records.some((r) => Object.prototype.hasOwnProperty.call(r, "fallbacks"));
    const note = $("routes-note");
    note.hidden = anyRoute || !view.records.length;
    note.textContent = "These records do not carry the routing decision yet: each response's x-lumen-route header has it.";
    const cols = [
      { label: "Model", field: "model", get: (g) => g.model },
      { label: "Provider", field: "provider", get: (g) => g.provider },
      { label: "Tier", get: (g) => (g.route && g.route.tier) || "–" },
      { label: "Why", wrap: true, get: (g) => (g.route ? g.route.reason : "–") },
      { label: "Requests", num: true, get: (g) => fmtInt(g.count) },
      { label: "With fallbacks", num: true, get: (g) => (fallbacksReported ? fmtInt(g.fallbacks) : "–") },
    ];
    if (rows.some((g) => g.saved !== null)) cols.push({ label: "Saved", num: true, get: (g) => fmtUsd(g.saved) });
    cols.push({ label: "Last", get: (g) => fmtAgo(g.last) });
    renderTable($("routes"), cols, rows, "no requests yet");
  }

  function renderFallbacks() {
    const reported = view.records.some((r) => Object.prototype.hasOwnProperty.call(r, "fallbacks"));
    const rows = view.records.filter((r) => fallbacksOf(r).length || (r.outcome && r.outcome !== "ok")).slice(0, FALLBACK_ROWS);
    $("fallbacks-note").textContent = reported
      ? "Requests that moved along their plan, or did not end ok."
      : "These records do not list fallback attempts yet; requests that did not end ok are shown.";
    renderTable($("fallbacks"), [
      { label: "Time", get: (r) => fmtTimeShort(r.time_ms) },
      { label: "Key", get: (r) => shortKeyName(r.key_id) },
      { label: "Model", get: (r) => r.model },
      { label: "Provider", get: (r) => r.provider },
      { label: "Attempts", wrap: true, get: (r) => fallbacksOf(r).join(", ") || "–" },
      { label: "Outcome", get: (r) => outcomeBadge(r.outcome) },
    ], rows, "no fallbacks or failures in recent requests");
  }

  function availabilityState(h) {
    const a = h.availability;
    if (!a) return "unknown";
    return typeof a === "string" ? a : a.state || Object.keys(a)[0] || "unknown";
  }

  function breakerState(h) {
    const b = h.record && h.record.breaker;
    if (!b) return "closed";
    return typeof b === "string" ? b : b.state || Object.keys(b)[0] || "unknown";
  }

  function renderHealth() {
    const rows = view.health.slice().sort((a, b) =>
      (a.provider || "").localeCompare(b.provider || "") || (a.model || "").localeCompare(b.model || ""));
    renderTable($("health"), [
      { label: "Provider", field: "provider", get: (h) => h.provider },
      { label: "Model", field: "model", get: (h) => h.model },
      {
        label: "Availability", get: (h) => {
          const s = availabilityState(h);
          const until = h.availability && h.availability.until_ms;
          return badge(until ? s + " until " + fmtTime(until).slice(11) : s, s === "up" ? "ok" : s === "probe" ? "warn" : "bad");
        },
      },
      {
        label: "Breaker", get: (h) => {
          const s = breakerState(h);
          const b = (h.record && h.record.breaker) || {};
          const since = b.since_ms || b.probe_ms;
          return badge(since ? s.replace("_", "-") + " " + fmtAgo(since) : s.replace("_", "-"), s === "closed" ? "ok" : s === "half_open" ? "warn" : "bad");
        },
      },
      { label: "Calls (window)", num: true, get: (h) => fmtInt(h.window_calls) },
      { label: "Errors (window)", num: true, get: (h) => fmtInt(h.window_errors) },
      { label: "Error rate", num: true, get: (h) => (h.window_calls ? ((100 * (h.window_errors || 0)) / h.window_calls).toFixed(0) + "%" : "–") },
      { label: "TTFT", num: true, get: (h) => fmtMs(h.record && h.record.ttft_ms) },
      { label: "ms / token", num: true, get: (h) => (h.record && typeof h.record.ms_per_token === "number" ? h.record.ms_per_token.toFixed(2) : "–") },
      { label: "Consecutive failures", num: true, get: (h) => fmtInt(h.record ? h.record.consecutive_failures : undefined) },
      { label: "Retry-After until", get: (h) => (h.record && h.record.retry_after_until_ms > Date.now() ? fmtTime(h.record.retry_after_until_ms) : "–") },
      { label: "Updated", get: (h) => fmtAgo(h.record && h.record.updated_ms) },
    ], rows, "no provider has been called yet");
  }

  // Known record fields, in the order shown; anything else a record carries is appended.
  const LOG_COLUMNS = [
    { field: "time_ms", label: "Time", get: (r) => fmtTimeShort(r.time_ms) },
    { field: "request_id", label: "Request", get: (r) => r.request_id },
    { field: "key_id", label: "Key", get: (r) => shortKeyName(r.key_id) },
    { field: "model", label: "Model", get: (r) => r.model },
    { field: "provider", label: "Provider", get: (r) => r.provider },
    { field: "stream", label: "Stream", get: (r) => fmtAny(r.stream) },
    { field: "prompt_tokens", label: "In", num: true, get: (r) => fmtInt(r.prompt_tokens) },
    { field: "completion_tokens", label: "Out", num: true, get: (r) => fmtInt(r.completion_tokens) },
    { field: "cached_tokens", label: "Cached", num: true, get: (r) => fmtInt(r.cached_tokens) },
    { field: "estimated", label: "Estimated", get: (r) => fmtAny(r.estimated) },
    { field: "cost_nanos", label: "Cost", num: true, get: (r) => fmtUsd(costOf(r)) },
    { field: "latency_ms", label: "Latency", num: true, get: (r) => fmtMs(r.latency_ms) },
    { field: "upstream_ms", label: "Upstream", num: true, get: (r) => fmtMs(r.upstream_ms) },
    { field: "outcome", label: "Outcome", get: (r) => outcomeBadge(r.outcome) },
  ];
  const COST_FIELDS = ["cost_usd", "cost"];

  function renderLog() {
    const known = new Set(LOG_COLUMNS.map((c) => c.field).concat(COST_FIELDS));
    const extra = [];
    for (const r of view.records) {
      for (const f of Object.keys(r)) if (!known.has(f) && !extra.includes(f)) extra.push(f);
    }
    const present = new Set(view.records.flatMap((r) => Object.keys(r)));
    const cols = LOG_COLUMNS.filter((c) => present.has(c.field) || (c.field === "cost_nanos" && COST_FIELDS.some((f) => present.has(f))) || !view.records.length)
      .concat(extra.map((f) => ({ field: f, label: f, wrap: true, get: (r) => (f === "fallbacks" ? fallbacksOf(r).join(", ") || "–" : fmtAny(r[f])) })));
    renderTable($("log"), cols, view.records.slice(0, LOG_ROWS), "no requests yet");
    $("log-note").textContent = view.records.length > LOG_ROWS
      ? "Newest " + LOG_ROWS + " of " + view.records.length + " records fetched."
      : view.records.length + " records.";
  }

  function renderAudit() {
    const a = view.audit;
    $("audit-seq").textContent = a ? fmtInt(a.seq) : "–";
    $("audit-hash").textContent = a && a.hash ? a.hash : "–";
  }

  async function verifyAudit() {
    const out = $("audit-result");
    const button = $("audit-verify");
    button.disabled = true;
    out.className = "";
    out.textContent = "verifying…";
    try {
      const v = await api("/admin/audit/verify");
      if (v.ok) {
        out.className = "ok";
        out.textContent = "✓ chain intact: " + fmtInt(v.checked) + " entries checked from the head to genesis";
      } else {
        const b = v.first_broken || {};
        out.className = "bad";
        out.textContent = "✗ chain broken at seq " + fmtAny(b.seq) + ": " + fmtAny(b.reason) + " (" + fmtInt(v.checked) + " checked)";
      }
      if (v.head) {
        view.audit = v.head;
        renderAudit();
      }
    } catch (e) {
      handleFailure(e);
      out.className = "bad";
      out.textContent = "could not verify: " + e.message;
    } finally {
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------- load

  function handleFailure(e) {
    if (e instanceof ApiFailure && e.status === 401) {
      signOut("The admin token was refused (" + e.message + "). Sign in again.");
      return true;
    }
    return false;
  }

  async function refresh() {
    const button = $("refresh");
    button.disabled = true;
    document.body.dataset.state = "loading";
    const problems = [];
    const soft = (what) => (e) => {
      if (handleFailure(e)) throw e;
      problems.push(what + ": " + e.message);
      return null;
    };
    try {
      const days = Number($("range").value) || 14;
      const today = isoDay(Date.now());
      const from = isoDay(Date.now() - (days - 1) * DAY_MS);
      const [keysBody, healthBody, audit] = await Promise.all([
        api("/admin/keys"),
        api("/admin/health").catch(soft("provider health")),
        api("/admin/audit/head").catch(soft("audit head")),
      ]);
      view.keys = (keysBody && keysBody.data) || [];
      view.health = (healthBody && healthBody.data) || [];
      view.audit = audit;

      const tenants = [...new Set(view.keys.map((k) => k.tenant || k.id))];
      const perTenant = await pool(tenants, CONCURRENCY, async (t) => {
        const q = "tenant=" + enc(t) + "&from=" + from + "&to=" + today;
        const [dayModel, byKey] = await Promise.all([
          api("/admin/usage?" + q).catch(soft("usage of tenant " + t)),
          api("/admin/usage?" + q + "&group_by=key").catch(soft("usage by key of tenant " + t)),
        ]);
        return {
          dayModel: (dayModel && dayModel.data) || [],
          byKey: (byKey && byKey.data) || [],
          total: dayModel && dayModel.total,
        };
      });
      const agg = aggregate(perTenant);
      view.byDay = agg.byDay;
      view.byModel = agg.byModel;
      view.byKey = agg.byKey;
      view.totals = agg.totals;

      const newest = view.keys.slice().sort((a, b) => (b.created || 0) - (a.created || 0)).slice(0, MAX_KEYS_FOR_RECORDS);
      const records = await pool(newest, CONCURRENCY, (k) =>
        api("/admin/usage/records?key_id=" + enc(k.id) + "&limit=" + RECORDS_PER_KEY)
          .then((b) => (b && b.data) || [])
          .catch(soft("records of " + k.id)));
      view.records = records.flat().filter(Boolean).sort((a, b) => (b.time_ms || 0) - (a.time_ms || 0));

      renderKpis();
      renderCharts(daysBetween(from, today));
      renderRoutes();
      renderFallbacks();
      renderHealth();
      renderLog();
      renderAudit();
      if (view.keys.length > MAX_KEYS_FOR_RECORDS) {
        problems.push("records are shown for the " + MAX_KEYS_FOR_RECORDS + " newest of " + view.keys.length + " keys");
      }
      const banner = $("load-error");
      banner.hidden = problems.length === 0;
      banner.textContent = problems.join("; ");
      loads += 1;
      document.body.dataset.loads = String(loads);
      document.body.dataset.state = "ready";
      $("updated").textContent = "updated " + new Date().toLocaleTimeString("en-GB");
    } catch (e) {
      if (!handleFailure(e)) {
        const banner = $("load-error");
        banner.hidden = false;
        banner.textContent = "could not load the dashboard: " + e.message;
        document.body.dataset.state = "error";
      }
    } finally {
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------- sign-in

  function showSignedIn(on) {
    $("sign-in").hidden = on;
    $("main").hidden = !on;
    $("toolbar").hidden = !on;
  }

  function signOut(message) {
    token = null;
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) { /* storage disabled */ }
    for (const id of Object.keys(charts)) {
      charts[id].destroy();
      delete charts[id];
    }
    showSignedIn(false);
    document.body.dataset.state = "signed-out";
    $("sign-in-error").textContent = message || "";
    $("token").value = "";
    $("token").focus();
  }

  async function signIn(candidate) {
    token = candidate;
    try {
      await api("/admin/keys");
    } catch (e) {
      token = null;
      if (e.status === 401) throw new Error("that admin token is not valid");
      throw e;
    }
    try {
      sessionStorage.setItem(TOKEN_KEY, candidate);
    } catch (_) { /* storage disabled: memory only */ }
    $("sign-in-error").textContent = "";
    $("token").value = "";
    showSignedIn(true);
    await refresh();
  }

  function start() {
    if (window.Chart) {
      window.Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
      window.Chart.defaults.color = "#4b5563";
    }
    $("sign-in-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const candidate = $("token").value.trim();
      if (!candidate) return;
      const button = $("sign-in-button");
      button.disabled = true;
      $("sign-in-error").textContent = "";
      try {
        await signIn(candidate);
      } catch (e) {
        $("sign-in-error").textContent = e.message;
        document.body.dataset.state = "signed-out";
      } finally {
        button.disabled = false;
      }
    });
    $("refresh").addEventListener("click", refresh);
    $("range").addEventListener("change", refresh);
    $("sign-out").addEventListener("click", () => signOut(""));
    $("audit-verify").addEventListener("click", verifyAudit);

    let saved = null;
    try {
      saved = sessionStorage.getItem(TOKEN_KEY);
    } catch (_) { /* storage disabled */ }
    if (saved) {
      signIn(saved).catch((e) => signOut(e.message));
    } else {
      $("token").focus();
    }
  }

  start();
})();

// Ferry's web dashboard: one script for every page. The server sends the same shell for each page; this script
// reads the path, builds the page and fills it from the JSON API (signed in by the HTTP-only session cookie), polling
// for live updates. Everything is built with DOM calls and textContent: no HTML is ever made from data.
"use strict";

// Errors are recorded where tests (and a curious engineer in the console) can read them.
window.__ferryErrors = [];
(function recordErrors() {
  const push = (what) => window.__ferryErrors.push(String(what).slice(0, 2000));
  window.addEventListener("error", (e) => push(`error: ${e.message} at ${e.filename}:${e.lineno}`));
  window.addEventListener("unhandledrejection", (e) => push(`unhandled rejection: ${e.reason && (e.reason.stack || e.reason)}`));
  const original = console.error;
  console.error = (...args) => { push(`console.error: ${args.join(" ")}`); original.apply(console, args); };
})();

const POLL_MS = 5000;
const LOG_POLL_MS = 2000;
// The most jobs one listing asks for (the API's own maximum is 10,000): the overview and nodes pages list the starting
// and running jobs to see who holds each GPU; the queue is counted by the server (`/api/v1/queue`), however deep.
const JOBS_LIMIT = 2000;
// The jobs page: the server filters and pages, newest first; a page is this many jobs (`per_page` in the address
// changes it, up to JOBS_PAGE_MAX), and the newest jobs loaded, up to JOBS_LIVE_MAX, are polled for live updates.
const JOBS_PAGE = 200;
const JOBS_PAGE_MAX = 1000;
const JOBS_LIVE_MAX = 1000;
// The most log text kept in the page; older output is dropped from the view (the download has all of it).
const LOG_CHARS_MAX = 512 * 1024;
// A GPU measured below this while allocated is idle: allocated but wasted.
const IDLE_PERCENT = 10;

// ---- small helpers ------------------------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}

class Unauthenticated extends Error {}

async function api(path) {
  const res = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (res.status === 401) {
    location.assign("/login");
    throw new Unauthenticated("signed out");
  }
  if (!res.ok) {
    let message = `${res.status} ${res.statusText}`;
    try { message = (await res.json()).message || message; } catch (_) { /* not JSON */ }
    const err = new Error(message);
    err.status = res.status;
    throw err;
  }
  return res.json();
}

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
const clock = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });
const fmtTime = (us) => (us ? dateTime.format(new Date(us / 1000)) : "–");

function fmtDuration(ms) {
  if (!(ms >= 0)) return "–";
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

function fmtBytes(b) {
  if (b === null || b === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
  return `${b >= 10 || i === 0 ? Math.round(b) : b.toFixed(1)} ${units[i]}`;
}

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
// GPU-seconds as GPU-hours with one decimal, or GPU-minutes under an hour.
const gpuHours = (s) => (s < 3600 ? `${Math.floor(s / 60)} GPU-minutes` : `${(s / 3600).toFixed(1)} GPU-hours`);
const num = (v, digits = 1) => (Math.round(v * 10 ** digits) / 10 ** digits).toLocaleString();
const cores = (millis) => num(millis / 1000, 2);
const coresText = (millis) => `${cores(millis)} CPU ${millis === 1000 ? "core" : "cores"}`;

function stateBadge(state) {
  return h("span", { class: `state state-${state}`, text: state.replace("_", " ") });
}

function noData() {
  return h("span", { class: "nodata", text: "no data" });
}

// A utilisation figure: a bar and a number, "no data" when nothing was measured (never 0%), "idle" marked in words.
function utilisation(percent, allocated) {
  if (percent === null || percent === undefined) return h("span", {}, h("span", { class: "meter nodata-meter", "aria-hidden": "true" }), noData());
  const bar = h("span", {});
  bar.style.width = `${Math.min(100, percent)}%`;
  const idle = allocated && percent < IDLE_PERCENT;
  return h("span", {}, h("span", { class: "meter", "aria-hidden": "true" }, bar), `${num(percent, 0)}%`,
    idle ? h("span", { class: "idle", text: " idle" }) : null);
}

function setStatus(text, bad) {
  const el = document.getElementById("status");
  el.textContent = text;
  el.className = bad ? "status bad" : "status";
}

// What has the keyboard's focus in the page's main part, as a selector that finds it again after a redraw (tables
// are rebuilt on every update), or null.
function focusKey(el) {
  const main = document.getElementById("main");
  if (!el || el === main || !main.contains(el)) return null;
  if (el.id) return `#${CSS.escape(el.id)}`;
  if (el.dataset.sort) return `button[data-sort="${CSS.escape(el.dataset.sort)}"]`;
  const href = el.getAttribute("href");
  return href ? `a[href="${CSS.escape(href)}"]` : null;
}

// Puts the focus back where it was if a redraw took the focused element away.
function refocus(key) {
  const active = document.activeElement;
  if (!key || (active && active !== document.body && active.isConnected)) return;
  const again = document.querySelector(`#main ${key}`);
  if (again) again.focus();
}

// Runs `update` now and every `ms` (a number, or a function that says how long) after the previous run finished,
// reporting failures in the header.
function poll(update, ms = POLL_MS) {
  // A run started while another is in flight (a filter changed) supersedes it: only the latest run sets the timer,
  // so there is never more than one loop.
  let timer = null, latest = 0;
  const run = async () => {
    clearTimeout(timer);
    const me = ++latest;
    try {
      const focus = focusKey(document.activeElement);
      await update();
      refocus(focus);
      if (me === latest) setStatus(`Updated ${clock.format(new Date())}`, false);
    } catch (e) {
      if (e instanceof Unauthenticated) return;
      if (me === latest) setStatus(`Update failed: ${e.message}`, true);
    }
    if (me === latest) timer = setTimeout(run, typeof ms === "function" ? ms() : ms);
  };
  run();
  return run;
}

function table(columns, rows, empty) {
  const head = h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : null, scope: "col", text: c.label })));
  const body = rows.length
    ? rows.map((r) => h("tr", {}, r.map((cell, i) => h("td", { class: columns[i].num ? "num" : null }, cell))))
    : [h("tr", {}, h("td", { colspan: columns.length, class: "muted", text: empty }))];
  return h("table", {}, h("thead", {}, head), h("tbody", {}, body));
}

function card(label, value, detail, extraClass) {
  return h("div", { class: `card ${extraClass || ""}` }, h("div", { class: "label", text: label }),
    h("div", { class: "value", text: value }), detail ? h("div", { class: "detail" }, detail) : null);
}

// A group of toggle buttons; `onpick(value)` is called with the chosen option's value.
function toggles(label, options, current, onpick) {
  const group = h("div", { class: "row", role: "group", "aria-label": label });
  group.append(h("span", { class: "muted small", text: `${label}:` }));
  for (const [value, text] of options) {
    const button = h("button", { type: "button", "aria-pressed": String(value === current), "data-value": value, text,
      onclick: () => {
        for (const b of group.querySelectorAll("button")) b.setAttribute("aria-pressed", String(b === button));
        onpick(value);
      } });
    group.append(button);
  }
  return group;
}

// The jobs that hold resources (starting or running): however deep the queue, they are few, bounded by the GPUs and
// CPUs there are.
async function placedJobs() {
  const [running, starting] = await Promise.all([api(`/api/v1/jobs?state=running&limit=${JOBS_LIMIT}`),
    api(`/api/v1/jobs?state=starting&limit=${JOBS_LIMIT}`)]);
  return [...running.jobs, ...starting.jobs];
}

// Where each GPU is held: "node/index" -> job, from the running jobs (every worker of a gang).
function gpuHolders(jobs) {
  const held = new Map();
  for (const job of jobs) {
    if (job.state !== "running" && job.state !== "starting") continue;
    const places = job.workers && job.workers.length ? job.workers : [{ node: job.node, gpu_ids: job.gpu_ids }];
    for (const p of places) for (const g of p.gpu_ids || []) held.set(`${p.node}/${g}`, job);
  }
  return held;
}

// Every GPU of every node with its holder and measured utilisation.
function gpuList(nodes, holders) {
  const list = [];
  for (const node of nodes) {
    const usage = new Map(((node.usage && node.usage.gpus) || []).map((g) => [g.index, g]));
    for (const gpu of node.gpus) {
      const id = `${node.name}/${gpu.index}`;
      const u = usage.get(gpu.index) || {};
      list.push({ id, node, gpu, job: holders.get(id) || null, util: u.utilization_percent ?? null, usage: u });
    }
  }
  return list;
}

const jobGpus = (job) => (job.gpu_share_milli ? job.gpu_share_milli / 1000 : job.gpus) * (job.nodes || 1);
const jobLink = (job) => h("a", { href: `/jobs/${job.id}`, text: String(job.id) });

// The means of series `id` (or the first series) of a /series answer; all "no data" when the series has no points.
function column(answer, id) {
  const s = answer.series.find((x) => id === undefined || x.id === id);
  const n = Math.round((answer.end_us - answer.start_us) / 1e6 / answer.step_s);
  return s ? s.mean : new Array(n).fill(null);
}

function seriesUrl(params) {
  return "/api/v1/series?" + new URLSearchParams(params).toString();
}

// ---- Overview -----------------------------------------------------------------------------------------------------

// Steps are multiples of the store's tiers (10 s, 1 min, 1 h), so each bucket is whole buckets of one tier.
const RANGES = { "1h": { start: "1h", step: "10s" }, "24h": { start: "24h", step: "5m" }, "30d": { start: "30d", step: "1h" } };

function overview(main) {
  let range = "1h";
  const cards = h("div", { class: "cards", id: "cards" });
  const pools = h("div", { id: "pools" });
  const elastic = h("div", { id: "elastic" });
  const models = h("div", { id: "models" });
  const idle = h("div", { id: "idle" });
  const byUser = h("div", { id: "by-user" }), byTeam = h("div", { id: "by-team" });
  const chartsAll = h("div", { id: "charts-all" }), chartsPool = h("div", { id: "charts-pool", class: "charts" });
  let refresh;
  main.replaceChildren(
    h("h1", { text: "Overview" }), cards,
    h("h2", { text: "Allocated GPUs that are idle (measured below 10%)" }), idle,
    h("div", { class: "grid2" }, h("section", {}, h("h2", { text: "Pools" }), pools),
      h("section", {}, h("h2", { text: "GPUs by model" }), models)),
    elastic,
    h("div", { class: "grid2" }, h("section", {}, h("h2", { text: "Running jobs by user" }), byUser),
      h("section", {}, h("h2", { text: "Running jobs by team" }), byTeam)),
    h("div", { class: "row" }, h("h2", { text: "GPUs over time" }),
      toggles("Range", [["1h", "Last hour"], ["24h", "Last day"], ["30d", "Last 30 days"]], range, (r) => { range = r; refresh(); })),
    chartsAll, h("h2", { text: "Per pool" }), chartsPool);

  async function update() {
    const [nodeList, jobs, queue, poolList] = await Promise.all([api("/api/v1/nodes"), placedJobs(), api("/api/v1/queue"),
      api("/api/v1/pools")]);
    const nodes = nodeList.nodes;
    const holders = gpuHolders(jobs);
    const gpus = gpuList(nodes, holders);
    const allocated = nodes.reduce((a, n) => a + n.allocated_gpus, 0);
    const measured = gpus.filter((g) => g.util !== null);
    const idleGpus = gpus.filter((g) => g.job && g.util !== null && g.util < IDLE_PERCENT);
    const running = jobs;
    const oldest = queue.oldest_queued_at_us;
    const ready = nodes.filter((n) => n.state === "ready").length;
    const cpuCap = nodes.reduce((a, n) => a + n.cpu_millis, 0), cpuAlloc = nodes.reduce((a, n) => a + n.allocated_cpu_millis, 0);
    const memCap = nodes.reduce((a, n) => a + n.memory_bytes, 0), memAlloc = nodes.reduce((a, n) => a + n.allocated_memory_bytes, 0);
    const meanUtil = measured.length ? measured.reduce((a, g) => a + g.util, 0) / measured.length : null;
    cards.replaceChildren(
      card("GPUs", `${allocated} of ${plural(gpus.length, "GPU")} allocated`, `${ready} of ${plural(nodes.length, "node")} ready`),
      card("GPU utilisation (measured)", meanUtil === null ? "no data" : `${num(meanUtil, 0)}%`,
        `measured on ${measured.length} of ${plural(gpus.length, "GPU")}`),
      card("Idle allocated GPUs", `${idleGpus.length} idle`, `allocated, measured below ${IDLE_PERCENT}%`, idleGpus.length ? "waste" : ""),
      card("Queue", `${queue.queued} queued`, queue.queued ? `oldest waiting ${fmtDuration(Date.now() - oldest / 1000)}` : "nothing waiting"),
      card("Running jobs", `${running.length} running`, plural(new Set(running.map((j) => j.owner)).size, "user")),
      card("CPUs", `${cores(cpuAlloc)} of ${cores(cpuCap)} cores`, "allocated"),
      card("Memory", `${fmtBytes(memAlloc)} of ${fmtBytes(memCap)}`, "allocated"));
    idle.replaceChildren(idleGpus.length
      ? table([{ label: "GPU" }, { label: "Job" }, { label: "User" }, { label: "Utilisation" }],
        idleGpus.map((g) => [g.id, jobLink(g.job), g.job.owner, utilisation(g.util, true)]), "")
      : h("p", { class: "muted", text: measured.length ? "None: every allocated GPU that reports telemetry is busy." : "None measured: no GPU reports telemetry." }));
    pools.replaceChildren(poolTable(nodes, gpus, poolList.pools));
    elastic.replaceChildren(...elasticPools(poolList.pools, Date.now()));
    models.replaceChildren(modelTable(gpus));
    byUser.replaceChildren(groupTable(running, (j) => j.owner, "User"));
    byTeam.replaceChildren(groupTable(running, (j) => j.team || "(no team)", "Team"));
  }

  async function charts() {
    const r = RANGES[range];
    const metrics = ["gpu_capacity", "gpu_allocated", "gpu_used"];
    const labels = { gpu_capacity: "capacity", gpu_allocated: "allocated", gpu_used: "used (busy-GPU equivalents, measured)" };
    const [all, perPool] = await Promise.all([
      Promise.all(metrics.map((m) => api(seriesUrl({ metric: m, by: "all", start: r.start, step: r.step })))),
      Promise.all(metrics.map((m) => api(seriesUrl({ metric: m, by: "pool", start: r.start, step: r.step })))),
    ]);
    const chart = (answers, id, title) => FerryCharts.lineChart({
      title, start_us: answers[0].start_us, step_s: answers[0].step_s, unit: "GPUs",
      series: metrics.map((m, i) => ({ label: labels[m], values: column(answers[i], id) })),
    });
    chartsAll.replaceChildren(chart(all, undefined, "All pools: GPU capacity, allocation and measured use (GPUs)"));
    const poolIds = [...new Set(perPool.flatMap((a) => a.series.map((s) => s.id)))].sort();
    chartsPool.replaceChildren(...(poolIds.length ? poolIds.map((p) => chart(perPool, p, `Pool ${p} (GPUs)`))
      : [h("p", { class: "muted", text: "No pool has recorded data in this range yet." })]));
  }

  refresh = poll(async () => { await update(); await charts(); });
}

// What a pool's backend can do, in the words `ferry pools` uses.
function capabilityWords(c) {
  const all = [[c.images, "images"], [c.gangs, "gangs"], [c.gpus_measured, "GPUs measured"], [c.native_view, "native view"],
    [c.node_pinning, "node pinning"], [c.gpu_pinning, "GPU pinning"]];
  return all.filter(([on]) => on).map(([, word]) => word).join(", ");
}

// The pools in their order (those only nodes name after them), with what each pool's backend can do. GPU use is
// "not measured" where the backend cannot measure it, rather than "no data" that might still come.
function poolTable(nodes, gpus, poolInfos) {
  const info = new Map(poolInfos.map((p) => [p.name, p]));
  const pools = [...poolInfos.map((p) => p.name), ...[...new Set(nodes.map((n) => n.pool))].filter((p) => !info.has(p)).sort()];
  const rows = pools.map((pool) => {
    const p = info.get(pool);
    const ns = nodes.filter((n) => n.pool === pool), gs = gpus.filter((g) => g.node.pool === pool);
    const measured = gs.filter((g) => g.util !== null);
    const mean = measured.length ? measured.reduce((a, g) => a + g.util, 0) / measured.length : null;
    const idle = gs.filter((g) => g.job && g.util !== null && g.util < IDLE_PERCENT).length;
    const unmeasurable = p && !p.capabilities.gpus_measured;
    return [pool, p ? `${p.kind}: ${capabilityWords(p.capabilities)}` : "", `${ns.filter((n) => n.state === "ready").length} of ${ns.length}`,
      `${ns.reduce((a, n) => a + n.allocated_gpus, 0)} of ${gs.length}`,
      unmeasurable ? h("span", { class: "muted", text: `not measured by ${p.kind}` }) : utilisation(mean, false),
      idle ? h("span", { class: "idle", text: `${idle} idle` }) : "0",
      `${cores(ns.reduce((a, n) => a + n.allocated_cpu_millis, 0))} of ${cores(ns.reduce((a, n) => a + n.cpu_millis, 0))}`];
  });
  return table([{ label: "Pool" }, { label: "Backend" }, { label: "Nodes ready" }, { label: "GPUs allocated" },
    { label: "GPU utilisation (measured)" }, { label: "Idle allocated GPUs" }, { label: "CPU cores allocated" }], rows, "No pools.");
}

// How many GPUs of each model are connected, how many are held, and how busy the measured ones are.
function modelTable(gpus) {
  const names = [...new Set(gpus.map((g) => g.gpu.model))].sort();
  const rows = names.map((model) => {
    const gs = gpus.filter((g) => g.gpu.model === model), measured = gs.filter((g) => g.util !== null);
    const mean = measured.length ? measured.reduce((a, g) => a + g.util, 0) / measured.length : null;
    return [model, String(gs.length), String(gs.filter((g) => g.job).length), fmtBytes(gs[0].gpu.memory_bytes),
      utilisation(mean, false)];
  });
  return table([{ label: "Model" }, { label: "GPUs", num: true }, { label: "Held", num: true }, { label: "Memory each" },
    { label: "GPU utilisation (measured)" }], rows, "No GPUs connected.");
}

function groupTable(jobs, key, label) {
  const groups = new Map();
  for (const j of jobs) {
    const g = groups.get(key(j)) || { jobs: 0, gpus: 0, cpu: 0, mem: 0, util: [] };
    g.jobs++; g.gpus += jobGpus(j); g.cpu += j.cpu_millis * (j.nodes || 1); g.mem += j.memory_bytes * (j.nodes || 1);
    if (j.usage && j.usage.gpu_utilization_percent !== null && j.usage.gpu_utilization_percent !== undefined) g.util.push(j.usage.gpu_utilization_percent);
    groups.set(key(j), g);
  }
  const rows = [...groups.entries()].sort((a, b) => b[1].gpus - a[1].gpus || a[0].localeCompare(b[0])).map(([k, g]) => [
    k, String(g.jobs), num(g.gpus, 2), cores(g.cpu), fmtBytes(g.mem),
    utilisation(g.util.length ? g.util.reduce((a, b) => a + b, 0) / g.util.length : null, g.gpus > 0)]);
  return table([{ label }, { label: "Jobs", num: true }, { label: "GPUs", num: true }, { label: "CPU cores", num: true },
    { label: "Memory", num: true }, { label: "GPU utilisation (measured)" }], rows, "No running jobs.");
}

// ---- Elastic pools ------------------------------------------------------------------------------------------------

// How many of an elastic pool's latest burst events its list shows, newest first (the chart marks all the API sends).
const CLOUD_EVENTS_LISTED = 20;
// The chart's least span: an hour up to now, so that a few recent events are not spread over the whole width.
const CLOUD_CHART_SPAN_MS = 3600e3;
// Each kind of cloud event by what it did to the pool's machines: asked for, given back (or gone), or not had.
const CLOUD_KIND_GROUPS = { provision: "asked", release: "back", gone: "back", failed: "failed", abandon: "failed" };
const CLOUD_SERIES = [
  { group: "asked", label: "machines asked for (provision)", marker: "circle", color: "#0072B2" },
  { group: "back", label: "given back or gone (release, gone)", marker: "triangle", color: "#009E73" },
  { group: "failed", label: "not had (failed, abandon)", marker: "cross", color: "#D55E00" },
];
const MACHINE_STATES = ["starting", "busy", "idle", "releasing"];

// Prices: the built-in catalog's are US dollars, and a pool's `price_hour` is read as the same. A sum of nothing may
// come as -0, shown as 0.
const usd = (v, digits = 2) => (v || 0).toLocaleString(undefined, { style: "currency", currency: "USD",
  minimumFractionDigits: 2, maximumFractionDigits: digits });

// A panel per elastic pool, under a heading, or nothing where no pool is elastic.
function elasticPools(pools, nowMs) {
  const elastic = pools.filter((p) => p.elastic);
  return elastic.length ? [h("h2", { text: "Elastic pools" }), ...elastic.map((p) => elasticPanel(p, nowMs))] : [];
}

// One elastic pool: its cloud and price, its machines by state, what they cost, why it is skipped if it is, the
// provider's last refusal, its live machines, and its burst decisions over time.
function elasticPanel(pool, nowMs) {
  const e = pool.elastic;
  const machines = e.machines || [], events = e.events || [], cooling = e.zones_cooling || [];
  const count = MACHINE_STATES.reduce((a, k) => a + e[k], 0);
  const bar = h("span", { class: "progress", "aria-hidden": "true" });
  for (const state of MACHINE_STATES) {
    if (!e[state]) continue;
    const part = h("span", { class: `machines-${state}`, title: `${e[state]} ${state}` });
    part.style.width = `${(100 * e[state]) / Math.max(1, e.max_nodes, count)}%`;
    bar.append(part);
  }
  const left = (untilUs) => fmtDuration(untilUs / 1000 - nowMs);
  const facts = [
    ["Cloud", `${e.provider} ${e.market} ${e.instance_type} in ${e.region}${e.zones.length ? ` (${e.zones.join(", ")})` : ""}, ${usd(e.price_hour, 4)}/h each`],
    ["Machines", h("span", { class: "elastic-machines" }, bar,
      `${count} of at most ${plural(e.max_nodes, "machine")}: ${MACHINE_STATES.map((k) => `${e[k]} ${k}`).join(", ")}`)],
    ["Spend", `${usd(e.spend)} so far, ${usd(e.spend_hour)}/h now`],
    ["Cooldown", e.cooldown_until_us != null
      ? `skipped for ${left(e.cooldown_until_us)} more, until ${fmtTime(e.cooldown_until_us)}${e.cooldown_reason ? `: ${e.cooldown_reason}` : ""}`
      : "none"],
    cooling.length && ["Zones cooling", h("ul", { class: "plain" }, cooling.map((z) =>
      h("li", { text: `${z.zone}: skipped for ${left(z.until_us)} more, until ${fmtTime(z.until_us)}: ${z.reason}` })))],
    e.last_error && ["Last provider error", h("span", { class: "provider-error", text: e.last_error })],
  ];
  const rows = machines.map((m) => [m.node, stateBadge(m.state), m.zone || "–", m.instance_id ? h("code", { text: m.instance_id }) : "–",
    h("span", {}, fmtDuration(nowMs - m.requested_at_us / 1000),
      m.joined_at_us ? h("span", { class: "muted small", text: ` (joined after ${fmtDuration((m.joined_at_us - m.requested_at_us) / 1000)})` }) : null),
    usd(m.cost)]);
  const latest = events.slice(-CLOUD_EVENTS_LISTED).reverse();
  return h("section", { class: "node elastic", "data-pool": pool.name, "aria-label": `Elastic pool ${pool.name}` },
    h("h2", {}, `${pool.name} `, e.cooldown_until_us != null ? h("span", { class: "state state-failed", text: "cooling down" }) : null),
    h("dl", { class: "spec" }, facts.filter(Boolean).flatMap(([k, v]) => [h("dt", { text: k }), h("dd", {}, v)])),
    h("h3", { text: "Machines" }),
    h("div", { class: "cloud-machines" }, table([{ label: "Node" }, { label: "State" }, { label: "Zone" }, { label: "Instance" },
      { label: "Age", num: true }, { label: "Cost", num: true }], rows, "No machines: none asked for, or all given back.")),
    h("h3", { text: "Burst history" }),
    events.length ? burstChart(pool.name, events, nowMs) : null,
    latest.length < events.length ? h("p", { class: "muted small", text: `The latest ${latest.length} of ${plural(events.length, "event")}, newest first.` }) : null,
    h("div", { class: "cloud-events" }, table([{ label: "Time" }, { label: "Event" }, { label: "Machines", num: true },
      { label: "Node" }, { label: "Detail" }], latest.map((ev) => [fmtTime(ev.at_us),
      h("span", { class: `state cloud-${CLOUD_KIND_GROUPS[ev.kind] || "other"}`, text: ev.kind }),
      String(ev.nodes), ev.node || "–", ev.detail]), "No burst decisions yet.")));
}

// An elastic pool's events in time, a mark each at the number of machines it concerned, its words in the mark's
// tooltip; over the last hour at least, up to now.
function burstChart(name, events, nowMs) {
  const first = Math.min(nowMs - CLOUD_CHART_SPAN_MS, ...events.map((ev) => ev.at_us / 1000));
  const series = CLOUD_SERIES.map((s) => ({ label: s.label, line: false, marker: s.marker, color: s.color,
    points: events.filter((ev) => CLOUD_KIND_GROUPS[ev.kind] === s.group).map((ev) => [ev.at_us / 1000, ev.nodes,
      `${fmtTime(ev.at_us)}: ${ev.kind}, ${plural(ev.nodes, "machine")}${ev.node ? ` (${ev.node})` : ""}: ${ev.detail}`]) }));
  return FerryCharts.xyChart({ title: `Pool ${name}: burst decisions over time (machines each)`, time: true, integerY: true,
    yLabel: "machines", xRange: [first, nowMs], series });
}

// ---- Nodes --------------------------------------------------------------------------------------------------------

const HEAT_RANGES = { "6h": { start: "6h", step: "10m", label: "10-minute steps" }, "24h": { start: "24h", step: "30m", label: "30-minute steps" },
  "7d": { start: "7d", step: "4h", label: "4-hour steps" } };

function nodesPage(main) {
  let range = "24h";
  const list = h("div", { id: "nodes" }), heat = h("div", { id: "heatmap" });
  let refresh;
  main.replaceChildren(h("h1", { text: "Nodes" }), list,
    h("div", { class: "row" }, h("h2", { text: "GPU utilisation over time (measured)" }),
      toggles("Range", [["6h", "Last 6 hours"], ["24h", "Last day"], ["7d", "Last 7 days"]], range, (r) => { range = r; refresh(); })),
    heat);
  refresh = poll(async () => {
    const r = HEAT_RANGES[range];
    const [nodeList, jobs, answer] = await Promise.all([api("/api/v1/nodes"), placedJobs(),
      api(seriesUrl({ metric: "gpu_utilization", by: "gpu", start: r.start, step: r.step }))]);
    const gpus = gpuList(nodeList.nodes, gpuHolders(jobs));
    list.replaceChildren(...(nodeList.nodes.length ? nodeList.nodes.map((n) => nodeCard(n, gpus.filter((g) => g.node === n)))
      : [h("p", { class: "muted", text: "No nodes have joined yet; start one with `ferry agent`." })]));
    const cols = Math.round((answer.end_us - answer.start_us) / 1e6 / answer.step_s);
    const byId = new Map(answer.series.map((s) => [s.id, s.mean]));
    const ids = [...new Set([...gpus.map((g) => g.id), ...byId.keys()])];
    heat.replaceChildren(ids.length ? FerryCharts.heatmap({
      title: "GPU utilisation per GPU over time", start_us: answer.start_us, step_s: answer.step_s, step_label: r.label,
      rows: ids.map((id) => ({ label: id, values: byId.get(id) || new Array(cols).fill(null) })),
    }) : h("p", { class: "muted", text: "No GPUs." }));
  });
}

function nodeCard(node, gpus) {
  const usage = node.usage;
  const rows = gpus.map((g) => [
    String(g.gpu.index), g.gpu.model, fmtBytes(g.gpu.memory_bytes),
    g.job ? h("span", {}, "job ", jobLink(g.job), ` (${g.job.owner})`) : h("span", { class: "muted", text: "free" }),
    utilisation(g.util, !!g.job),
    g.usage.memory_used_bytes !== undefined && g.usage.memory_used_bytes !== null ? fmtBytes(g.usage.memory_used_bytes) : noData(),
    g.usage.temperature_c !== undefined && g.usage.temperature_c !== null ? `${g.usage.temperature_c} °C` : noData(),
  ]);
  const measuredCpu = usage ? `${cores(usage.cpu_millis_used)} cores used (measured)` : "CPU use: no data";
  const measuredMem = usage ? `${fmtBytes(usage.memory_used_bytes)} used (measured)` : "memory use: no data";
  return h("section", { class: "node", "aria-label": `Node ${node.name}` },
    h("h2", {}, `${node.name} `, h("span", { class: `state state-${node.state === "ready" ? "running" : "failed"}`, text: node.state.replace("_", " ") })),
    h("p", { class: "small" }, `Pool ${node.pool} · GPUs ${node.allocated_gpus} of ${node.gpus.length} allocated · CPU ${cores(node.allocated_cpu_millis)} of ${cores(node.cpu_millis)} cores allocated, ${measuredCpu} · memory ${fmtBytes(node.allocated_memory_bytes)} of ${fmtBytes(node.memory_bytes)} allocated, ${measuredMem} · last report ${fmtTime(node.last_seen_us)}`),
    node.gpus.length ? table([{ label: "GPU" }, { label: "Model" }, { label: "Memory" }, { label: "Allocated to" },
      { label: "Utilisation (measured)" }, { label: "GPU memory used" }, { label: "Temperature" }], rows, "") : h("p", { class: "muted", text: "No GPUs." }));
}

// ---- Jobs ---------------------------------------------------------------------------------------------------------

const STATES = ["queued", "starting", "running", "succeeded", "failed", "cancelled", "timed_out", "lost"];

const JOB_COLUMNS = [
  { key: "id", label: "ID", num: true, value: (j) => j.id, cell: jobLink },
  { key: "name", label: "Name", value: (j) => j.name || "" },
  { key: "state", label: "State", value: (j) => j.state, cell: (j) => stateBadge(j.state) },
  { key: "owner", label: "User", value: (j) => j.owner },
  { key: "team", label: "Team", value: (j) => j.team || "" },
  { key: "project", label: "Project", value: (j) => j.project || "" },
  { key: "pool", label: "Pool", value: (j) => j.pool || "" },
  { key: "node", label: "Node:GPUs", value: (j) => j.node || "", cell: (j) => (j.node ? `${j.node}${j.gpu_ids.length ? ":" + j.gpu_ids.join(",") : ""}` : "–") },
  { key: "gpus", label: "GPUs", num: true, value: jobGpus, cell: (j) => num(jobGpus(j), 3) },
  { key: "cpu", label: "CPUs", num: true, value: (j) => j.cpu_millis, cell: (j) => cores(j.cpu_millis) },
  { key: "memory", label: "Memory", num: true, value: (j) => j.memory_bytes, cell: (j) => fmtBytes(j.memory_bytes) },
  { key: "submitted", label: "Submitted", value: (j) => j.submitted_at_us, cell: (j) => fmtTime(j.submitted_at_us) },
  { key: "duration", label: "Waited / ran", num: true, value: jobDuration, cell: (j) => fmtDuration(jobDuration(j)) },
  { key: "util", label: "GPU util. (measured)", value: (j) => (j.usage ? j.usage.gpu_utilization_percent ?? -1 : -1),
    cell: (j) => (j.state === "running" && jobGpus(j) > 0 ? utilisation(j.usage ? j.usage.gpu_utilization_percent : null, true) : "–") },
];

function jobDuration(j) {
  const now = Date.now() * 1000;
  if (j.state === "queued") return (now - j.submitted_at_us) / 1000;
  if (j.started_at_us) return ((j.finished_at_us || now) - j.started_at_us) / 1000;
  return ((j.finished_at_us || now) - j.submitted_at_us) / 1000;
}

function jobsPage(main) {
  const params = new URLSearchParams(location.search);
  const f = { state: params.get("state") || "active", user: params.get("user") || "", project: params.get("project") || "",
    team: params.get("team") || "", pool: params.get("pool") || "", node: params.get("node") || "", within: params.get("within") || "any" };
  let sort = { key: params.get("sort") || "id", desc: params.get("dir") !== "asc" };
  const perPage = Math.max(1, Math.min(JOBS_PAGE_MAX, Number(params.get("per_page")) || JOBS_PAGE));
  // `jobs` holds what the server returned for the filters, newest (highest id) first: the live window, polled, and
  // any older pages loaded with "Load more", kept as they were loaded. `generation` changes with the filters, so an
  // answer to an older question is dropped.
  let jobs = [], more = false, generation = 0, loaded = false, poolOf = new Map(), refresh, typing = null;
  const lists = {};
  const filtersChanged = () => {
    generation++;
    jobs = []; more = false; loaded = false;
    render();
    refresh();
  };
  const text = (key, label) => {
    lists[key] = h("datalist", { id: `list-${key}` });
    return h("label", {}, label, h("input", { type: "search", name: key, value: f[key], list: `list-${key}`,
      oninput: (e) => {
        clearTimeout(typing);
        typing = setTimeout(() => { if (f[key] !== e.target.value.trim()) { f[key] = e.target.value.trim(); filtersChanged(); } }, 400);
      },
      onchange: (e) => { clearTimeout(typing); if (f[key] !== e.target.value.trim()) { f[key] = e.target.value.trim(); filtersChanged(); } } }),
    lists[key]);
  };
  const select = (key, label, options) => h("label", {}, label, h("select", { name: key,
    onchange: (e) => { f[key] = e.target.value; filtersChanged(); } },
  options.map(([v, t]) => h("option", { value: v, selected: v === f[key], text: t }))));
  const count = h("p", { class: "muted small", id: "jobs-count", "aria-live": "polite" });
  const holder = h("div", { id: "jobs-table" });
  const moreButton = h("button", { type: "button", id: "jobs-more", hidden: true, onclick: () => loadMore() });
  const moreNote = h("span", { class: "muted small", id: "jobs-more-note" });
  main.replaceChildren(h("h1", { text: "Jobs" }),
    h("form", { class: "filters", role: "search", "aria-label": "Filter jobs", onsubmit: (e) => e.preventDefault() },
      select("state", "State", [["active", "queued, starting or running"], ["all", "any state"], ...STATES.map((s) => [s, s.replace("_", " ")])]),
      text("user", "User"), text("project", "Project"), text("team", "Team"), text("pool", "Pool"), text("node", "Node"),
      select("within", "Submitted", [["any", "any time"], ["1h", "last hour"], ["24h", "last day"], ["7d", "last 7 days"], ["30d", "last 30 days"]])),
    count, holder, h("div", { class: "row pager" }, moreButton, moreNote));

  // The API's query for the filters: the server filters (exact names) and pages, newest first.
  function apiQuery(extra) {
    const q = new URLSearchParams();
    if (f.state === "all") q.set("all", "true");
    else if (f.state !== "active") q.set("state", f.state);
    for (const [key, name] of [["user", "owner"], ["project", "project"], ["team", "team"], ["pool", "pool"], ["node", "node"]]) {
      if (f[key]) q.set(name, f[key]);
    }
    if (f.within !== "any") q.set("since", f.within);
    for (const [k, v] of Object.entries(extra)) q.set(k, String(v));
    return q;
  }
  const withPool = (j) => ({ ...j, pool: j.node ? poolOf.get(j.node) || "" : "" });

  function render() {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(f)) if (v && v !== "any" && !(k === "state" && v === "active")) q.set(k, v);
    if (sort.key !== "id") q.set("sort", sort.key);
    if (!sort.desc) q.set("dir", "asc");
    if (perPage !== JOBS_PAGE) q.set("per_page", perPage);
    history.replaceState(null, "", `/jobs${q.toString() ? "?" + q : ""}`);
    const col = JOB_COLUMNS.find((c) => c.key === sort.key) || JOB_COLUMNS[0];
    // Sorting is of the jobs loaded; the server always pages newest first.
    const shown = jobs.slice().sort((a, b) => {
      const x = col.value(a), y = col.value(b);
      const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return (sort.desc ? -c : c) || b.id - a.id;
    });
    count.textContent = !loaded ? "Loading…" : `${plural(shown.length, "job")} loaded, newest first${more ? "; older jobs match too" : ""}`
      + (sort.key !== "id" ? ` (sorted by ${col.label.toLowerCase()} among those loaded)` : "");
    moreButton.hidden = !more;
    moreButton.textContent = `Load ${perPage} more`;
    moreNote.textContent = more && jobs.length ? `older than job ${jobs[jobs.length - 1].id}` : "";
    const head = h("tr", {}, JOB_COLUMNS.map((c) => h("th", { scope: "col", class: c.num ? "num" : null,
      "aria-sort": c.key === sort.key ? (sort.desc ? "descending" : "ascending") : null },
    h("button", { type: "button", class: "sort", "data-sort": c.key,
      onclick: () => { sort = { key: c.key, desc: sort.key === c.key ? !sort.desc : false }; render(); focusSort(c.key); } },
    c.label + (c.key === sort.key ? (sort.desc ? " ▼" : " ▲") : "")))));
    const body = shown.map((j) => h("tr", { "data-job": j.id }, JOB_COLUMNS.map((c) => h("td", { class: c.num ? "num" : null },
      c.cell ? c.cell(j) : c.value(j) || "–"))));
    if (!shown.length) body.push(h("tr", {}, h("td", { colspan: JOB_COLUMNS.length, class: "muted", text: loaded ? "No jobs match." : "Loading…" })));
    holder.replaceChildren(h("table", { id: "jobs" }, h("thead", {}, head), h("tbody", {}, body)));
    for (const key of ["user", "project", "team", "pool", "node"]) {
      const values = [...new Set(jobs.map((j) => (key === "user" ? j.owner : j[key])).filter(Boolean))].sort();
      lists[key].replaceChildren(...values.map((v) => h("option", { value: v })));
    }
  }
  const focusSort = (key) => holder.querySelector(`button[data-sort="${key}"]`).focus();
  const renderKeepingFocus = () => {
    const active = document.activeElement;
    const focused = active && holder.contains(active) && active.dataset ? active.dataset.sort : null;
    render();
    if (focused) focusSort(focused);
  };

  // The live window: the newest jobs (as many as are loaded, up to JOBS_LIVE_MAX), polled; older pages stay as loaded.
  refresh = poll(async () => {
    const asked = generation;
    const limit = Math.min(JOBS_LIVE_MAX, Math.max(perPage, jobs.length));
    const [jobList, nodeList] = await Promise.all([api(`/api/v1/jobs?${apiQuery({ limit })}`), api("/api/v1/nodes")]);
    if (asked !== generation) return;
    poolOf = new Map(nodeList.nodes.map((n) => [n.name, n.pool]));
    const fresh = jobList.jobs.map(withPool);
    const full = fresh.length === limit;
    const lowest = fresh.length ? fresh[fresh.length - 1].id : 0;
    // A short answer is everything that matches; a full one says more match only the first time (after that, "more"
    // is what the last "Load more" found, and jobs that are new push the oldest loaded out of the live window).
    const older = full ? jobs.filter((j) => j.id < lowest) : [];
    if (!full) more = false;
    else if (!loaded) more = true;
    jobs = fresh.concat(older);
    loaded = true;
    renderKeepingFocus();
  });

  async function loadMore() {
    if (!jobs.length) return;
    const asked = generation;
    moreButton.disabled = true;
    try {
      const page = await api(`/api/v1/jobs?${apiQuery({ limit: perPage, before: jobs[jobs.length - 1].id })}`);
      if (asked !== generation) return;
      jobs = jobs.concat(page.jobs.map(withPool));
      more = page.jobs.length === perPage;
      render();
      if (more) moreButton.focus();
    } catch (e) {
      if (!(e instanceof Unauthenticated)) setStatus(`Loading more failed: ${e.message}`, true);
    } finally {
      moreButton.disabled = false;
    }
  }
}

// ---- One job ------------------------------------------------------------------------------------------------------

// The scheduler's reason for a timeline entry as a line of facts under its sentence, with the jobs it names linked.
// A kind this page does not know (a newer server's) shows nothing more than the sentence.
function reasonFacts(reason) {
  const facts = [];
  const link = (id) => jobLink({ id });
  if (reason.kind === "placed") {
    const gpus = (w) => (w.gpu_ids.length ? `GPU${w.gpu_ids.length === 1 ? "" : "s"} ${w.gpu_ids.join(",")}` : "no GPU");
    facts.push(`pool ${reason.pool}`);
    reason.workers.forEach((w, rank) => facts.push(`${reason.workers.length > 1 ? `rank ${rank}: ` : ""}${w.node}, ${gpus(w)}`));
    facts.push(`chosen of ${plural(reason.candidates, "candidate node")}`);
    if (reason.backfilled_before != null) facts.push(h("span", {}, "backfilled ahead of job ", link(reason.backfilled_before)));
    // Which pools before the burst pool could not hold it, as `ferry show` says it.
    const past = reason.burst_past || [];
    const full = past.length ? `: ${past.join(", ")} ${past.length === 1 ? "was" : "were"} fully allocated for it` : "";
    if (reason.burst_waited_s != null) facts.push(`burst after waiting ${fmtDuration(reason.burst_waited_s * 1000)}${full}`);
    else if (full) facts.push(`burst${full}`);
  } else if (reason.kind === "preempted") {
    facts.push(h("span", {}, "for job ", link(reason.by)));
    const rule = reason.rule || {};
    if (rule.kind === "priority") facts.push(`priority ${rule.preemptor_priority} over ${rule.victim_priority}`);
    else if (rule.kind === "reclaim") facts.push(`team ${rule.preemptor_team} reclaims its quota from ${rule.victim_team}`);
    else if (rule.kind === "reclaim_project") facts.push(`project ${rule.preemptor_project} reclaims its quota from ${rule.victim_project} (team ${rule.team})`);
    else if (rule.kind === "attained") facts.push(`least attained: it had ${gpuHours(rule.victim_gpu_s)}, the waiting job ${gpuHours(rule.preemptor_gpu_s)}; resumes from its checkpoint`);
    facts.push(`grace ${fmtDuration(reason.grace_s * 1000)}`);
  } else {
    return null;
  }
  const line = h("span", { class: "muted small reason", "data-kind": reason.kind });
  facts.forEach((f, i) => line.append(...(i ? [" · ", f] : [f])));
  return [h("br", {}), line];
}

function jobPage(main, id) {
  const title = h("h1", { text: `Job ${id}` });
  const spec = h("dl", { class: "spec", id: "job-spec" }), place = h("dl", { class: "spec", id: "job-placement" });
  const waiting = h("div", { id: "job-waiting" }), timeline = h("div", { id: "job-timeline" });
  const charts = h("div", { class: "charts", id: "job-charts" });
  // The job's MLflow run (metrics, params, artifacts): shown only for a job that has one.
  const trackingHolder = h("div", { id: "job-tracking" });
  let tracking = null;
  const search = h("input", { type: "search", id: "log-search", placeholder: "Search the log", "aria-label": "Search the log" });
  const logView = h("pre", { class: "log", id: "log", tabindex: "0", "aria-label": "Log output" });
  const logInfo = h("span", { class: "muted small", id: "log-info" });
  const download = h("a", { href: `/api/v1/jobs/${id}/logs`, download: `ferry-job-${id}.log`, text: "Download the whole log" });
  // Cancelling takes two steps: "Cancel job", then an inline confirmation (no modal dialog).
  const actions = h("div", { class: "row actions", id: "job-actions" });
  const cancelResult = h("p", { id: "cancel-result", role: "status", "aria-live": "polite" });
  let confirming = false, cancelling = false;
  const cancelButton = h("button", { type: "button", id: "cancel-job", class: "danger", text: "Cancel job",
    onclick: () => { confirming = true; renderActions(); confirmButton.focus(); } });
  const confirmButton = h("button", { type: "button", id: "cancel-confirm", class: "danger-strong", text: `Yes, cancel job ${id}`,
    onclick: () => cancelJob() });
  const keepButton = h("button", { type: "button", id: "cancel-keep", text: "No, keep it",
    onclick: () => { confirming = false; renderActions(); cancelButton.focus(); } });
  const cancellable = () => job && ["queued", "starting", "running"].includes(job.state);
  let shownActions = "";
  function renderActions() {
    if (!cancellable() && !cancelling) confirming = false;
    // Rebuilt only when it changes: moving a focused button would drop the keyboard's focus.
    const want = confirming ? "confirm" : cancellable() ? "cancel" : "none";
    if (want === shownActions) return;
    shownActions = want;
    actions.replaceChildren(...(confirming
      ? [h("span", { id: "cancel-question", text: `Cancel job ${id}? ${job && job.state === "queued" ? "It will not start." : "Its processes are stopped."}` }),
        confirmButton, keepButton]
      : cancellable() ? [cancelButton] : []));
  }
  async function cancelJob() {
    cancelling = true;
    confirmButton.disabled = keepButton.disabled = true;
    cancelResult.className = "";
    cancelResult.textContent = `Cancelling job ${id}…`;
    try {
      // The session cookie signs the request; the browser adds this page's Origin, which the server requires.
      const res = await fetch(`/api/v1/jobs/${id}/cancel`, { method: "POST", credentials: "same-origin",
        headers: { Accept: "application/json" } });
      if (res.status === 401) { location.assign("/login"); return; }
      let body = null;
      try { body = await res.json(); } catch (_) { /* not JSON */ }
      if (!res.ok) throw new Error((body && body.message) || `${res.status} ${res.statusText}`);
      cancelResult.textContent = `Cancel requested: job ${id} is ${body.state.replace("_", " ")}${body.message ? ` (${body.message})` : ""}.`;
      job = body;
    } catch (e) {
      cancelResult.className = "error";
      cancelResult.textContent = `Job ${id} was not cancelled: ${e.message}`;
    } finally {
      cancelling = false; confirming = false;
      confirmButton.disabled = keepButton.disabled = false;
      renderActions();
      if (refresh) refresh();
    }
  }

  main.replaceChildren(title, actions, cancelResult, h("div", { class: "grid2" },
    h("section", {}, h("h2", { text: "Spec" }), spec),
    h("section", {}, h("h2", { text: "Placement and result" }), place, waiting)),
  h("h2", { text: "Use against what it asked for" }), charts, trackingHolder,
  h("h2", { text: "Timeline" }), timeline,
  h("h2", { text: "Log" }), h("div", { class: "row" }, search, download, logInfo), logView);

  let job = null, logText = "", logOffset = null, decoder = new TextDecoder(), lastChartsAt = 0;
  search.addEventListener("input", () => renderLog());

  function renderLog() {
    const want = search.value;
    const atBottom = logView.scrollTop + logView.clientHeight >= logView.scrollHeight - 20;
    download.hidden = !!(job && job.output_removed_at_us);
    if (job && job.output_removed_at_us) {
      // The server's retention removed it: say so, rather than show an empty log.
      const days = job.finished_at_us ? Math.max(0, Math.floor((job.output_removed_at_us - job.finished_at_us) / 86400e6)) : null;
      logView.textContent = `(output removed by the server's retention${days === null ? "" : ` ${plural(days, "day")} after the job finished`}; [retention] logs in its configuration sets how long output is kept)`;
      logInfo.textContent = "";
    } else if (!want) {
      logView.textContent = logText || (job && job.log_bytes === 0 ? "(no output yet)" : "");
      logInfo.textContent = job ? `${fmtBytes(job.log_bytes)} of output` : "";
    } else {
      const lines = logText.split("\n").filter((l) => l.toLowerCase().includes(want.toLowerCase()));
      logView.replaceChildren(...lines.flatMap((line) => [...highlight(line, want), "\n"]));
      logInfo.textContent = plural(lines.length, "matching line");
    }
    if (atBottom) logView.scrollTop = logView.scrollHeight;
  }

  async function readLog() {
    if (!job) return;
    if (job.output_removed_at_us) { renderLog(); return; }
    if (logOffset === null) logOffset = Math.max(0, job.log_bytes - LOG_CHARS_MAX / 2);
    if (logOffset >= job.log_bytes && logText) return;
    const res = await fetch(`/api/v1/jobs/${id}/logs?offset=${logOffset}`, { credentials: "same-origin" });
    if (!res.ok) throw new Error(`log: ${res.status}`);
    const bytes = new Uint8Array(await res.arrayBuffer());
    logOffset += bytes.length;
    logText = (logText + decoder.decode(bytes, { stream: true })).slice(-LOG_CHARS_MAX);
    renderLog();
  }

  async function update() {
    job = await api(`/api/v1/jobs/${id}`);
    document.title = `Job ${id} · Ferry`;
    title.replaceChildren(`Job ${id}${job.name ? " · " + job.name : ""} `, stateBadge(job.state));
    if (!cancelling) renderActions();
    const dl = (el, pairs) => el.replaceChildren(...pairs.filter(Boolean).flatMap(([k, v]) => [h("dt", { text: k }), h("dd", {}, v)]));
    const env = Object.entries(job.env || {});
    // The page is redrawn on every poll: keep the values shown if the reader opened them.
    const envOpen = !!spec.querySelector("details[open]");
    dl(spec, [
      ["Command", h("code", { text: job.command.map(shellQuote).join(" ") })],
      ["Owner", job.owner], ["Team", job.team || "–"], ["Project", job.project || "–"],
      ["Asked for", `${job.nodes > 1 ? job.nodes + " nodes × " : ""}${job.gpu_share_milli ? num(job.gpu_share_milli / 1000, 3) + " of a GPU" : plural(job.gpus, "GPU")}, ${coresText(job.cpu_millis)}, ${fmtBytes(job.memory_bytes)} memory`],
      ["Priority", job.priority], ["Retries", `${job.retries} (this is attempt ${job.attempt})`],
      ["Max runtime", job.max_runtime_s ? fmtDuration(job.max_runtime_s * 1000) : "none"],
      ["Code", job.code ? h("span", {}, h("code", { text: job.code.git_commit || "(not a git repository)" }), job.code.git_dirty ? " with uncommitted changes" : "") : job.workdir || "–"],
      // Names at a glance; the values (a whole PATH, tokens) only for a reader who opens them.
      ["Environment", env.length ? h("details", { open: envOpen },
        h("summary", { text: env.map(([k]) => k).join(", ") }),
        h("code", { class: "env", text: env.map(([k, v]) => `${k}=${v}`).join("\n") })) : "none"],
      // Secrets by name: their values never reach the dashboard.
      Object.keys(job.secrets || {}).length && ["Secrets", Object.entries(job.secrets).map(([v, n]) => v === n ? v : `${v} (from ${n})`).join(", ")],
      job.image && ["Image", h("code", { text: job.image })],
    ]);
    // The page is redrawn on every poll: keep the native form open if the reader opened it.
    const nativeOpen = !!place.querySelector("#native details[open]");
    const workers = job.workers && job.workers.length ? job.workers.map((w) => `rank ${w.rank}: ${w.node} GPUs ${w.gpu_ids.join(",") || "none"}`).join("; ") : null;
    // The pool the scheduler placed it in, from the latest placement's reason (entries before reasons were kept
    // have none).
    const placed = job.timeline.filter((e) => e.reason && e.reason.kind === "placed").pop();
    dl(place, [
      ["Pool", placed ? placed.reason.pool : job.pool || "–"],
      ["Node", job.node || "–"], ["GPUs", job.gpu_ids.length ? job.gpu_ids.join(", ") : "–"], workers && ["Workers", workers],
      job.native && ["Engine", h("span", { id: "native" }, `${job.native.kind} job ${job.native.id}${job.native.state ? ", " + job.native.state : ""}`,
        h("details", { open: nativeOpen }, h("summary", { text: "what Ferry submitted" }), h("pre", { class: "native", text: job.native.spec })))],
      ["Submitted", fmtTime(job.submitted_at_us)], ["Started", fmtTime(job.started_at_us)], ["Finished", fmtTime(job.finished_at_us)],
      ["Exit code", job.exit_code ?? (job.signal ? `signal ${job.signal}` : "–")],
      job.message && ["Message", job.message],
      job.predicted_runtime && ["Expected run", `about ${fmtDuration(job.predicted_runtime.runtime_s * 1000)} (90th percentile of the last ${job.predicted_runtime.samples} successful run${job.predicted_runtime.samples === 1 ? "" : "s"} ${job.predicted_runtime.basis === "same_kind" ? "of the same name, command, project and resources" : "with the same name"})${job.state === "succeeded" && job.started_at_us && job.finished_at_us ? `; it ran ${fmtDuration((job.finished_at_us - job.started_at_us) / 1000)}` : ""}`],
      ["Measured now", job.usage ? `${job.usage.cpu_millis_used != null ? cores(job.usage.cpu_millis_used) + " cores" : "CPU no data"}, ${job.usage.memory_used_bytes != null ? fmtBytes(job.usage.memory_used_bytes) : "memory no data"}${job.gpus || job.gpu_share_milli ? `, GPU ${job.usage.gpu_utilization_percent != null ? num(job.usage.gpu_utilization_percent, 0) + "%" : "no data"}` : ""}` : "no data"],
    ]);
    waiting.replaceChildren(...(job.waiting ? [h("h2", { text: "Why it waits" }), h("p", { id: "waiting-message", text: job.waiting.message }),
      job.waiting.estimated_start_us ? h("p", { class: "muted", text: `Expected to start by ${fmtTime(job.waiting.estimated_start_us)} if every job ahead runs to its limit${job.waiting.estimate_predicted ? ", or for as long as its earlier runs where it has none" : ""}.` }) : null] : []));
    timeline.replaceChildren(table([{ label: "Time" }, { label: "State" }, { label: "What happened" }],
      job.timeline.map((e) => [fmtTime(e.at_us), stateBadge(e.state),
        h("span", {}, e.message, e.reason ? reasonFacts(e.reason) : null)]), "No events yet."));
    // Charts change slowly; redraw them every 15 seconds, not on every poll.
    if (Date.now() - lastChartsAt > 15000) {
      lastChartsAt = Date.now();
      await drawCharts();
    }
    if (job.tracking && !tracking) {
      tracking = runView(job.tracking);
      trackingHolder.replaceChildren(...tracking.sections);
    }
    if (tracking) await tracking.update(["queued", "starting", "running"].includes(job.state));
    await readLog();
  }

  async function drawCharts() {
    if (!job.started_at_us) {
      charts.replaceChildren(h("p", { class: "muted", text: "The job has not started; there is nothing measured yet." }));
      return;
    }
    // From just before the start to the end (or now), at least five minutes, in about 120 steps of 10 s or more.
    const endUs = job.finished_at_us || Date.now() * 1000;
    const startUs = Math.min(job.started_at_us - 30e6, endUs - 300e6);
    const stepS = Math.max(10, Math.ceil((endUs - startUs) / 1e6 / 120 / 10) * 10);
    const iso = (us) => new Date(us / 1000).toISOString();
    const range = { by: "job", id: String(id), start: iso(startUs), end: iso(endUs), step: `${stepS}s` };
    const get = (metric) => api(seriesUrl({ metric, ...range }));
    const [cu, ca, mu, ma, gu] = await Promise.all(["cpu_used", "cpu_allocated", "memory_used", "memory_allocated", "gpu_utilization"].map(get));
    const col = (a) => column(a, undefined);
    // Memory in GiB, or MiB when it all stays under 1 GiB, so the axis reads 256, 512 rather than 0, 0.
    const memMax = Math.max(0, ...col(mu).concat(col(ma)).filter((v) => v !== null));
    const [memUnit, memDiv] = memMax < 2 ** 30 ? ["MiB", 2 ** 20] : ["GiB", 2 ** 30];
    const inUnit = (v) => (v === null ? null : v / memDiv);
    const parts = [
      FerryCharts.lineChart({ title: "CPU: used (measured) against allocated", start_us: cu.start_us, step_s: cu.step_s, unit: "cores",
        series: [{ label: "used", values: col(cu) }, { label: "allocated", values: col(ca) }] }),
      FerryCharts.lineChart({ title: "Memory: used (measured) against allocated", start_us: mu.start_us, step_s: mu.step_s, unit: memUnit,
        series: [{ label: "used", values: col(mu).map(inUnit) }, { label: "allocated", values: col(ma).map(inUnit) }] }),
    ];
    if (job.gpus > 0 || job.gpu_share_milli > 0) {
      parts.push(FerryCharts.lineChart({ title: "GPU utilisation (measured, mean over the job's GPUs)", start_us: gu.start_us, step_s: gu.step_s,
        unit: "percent", yMax: 100, format: (v) => `${v}%`, series: [{ label: "utilisation", values: col(gu) }] }));
    }
    charts.replaceChildren(...parts);
  }

  const refresh = poll(update, LOG_POLL_MS);
}

// ---- A job's MLflow run: metrics, params and artifacts -------------------------------------------------------------

const MLFLOW = "/api/2.0/mlflow";
const ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts";
// How often a live job's metrics and artifacts are read again.
const ML_POLL_MS = 10000;
// The most points of one metric's history loaded (the first ones logged), and how many one request asks for (the
// server's own maximum is 25,000).
const ML_POINTS_MAX = 25000;
const ML_PAGE = 10000;
// The most metrics drawn as charts; the table lists all of them.
const ML_CHARTS_MAX = 24;
// A longer history is drawn from the lowest and highest point of this many buckets of steps.
const ML_DRAW_BUCKETS = 300;

const inlineError = (text) => h("p", { class: "error", role: "alert", text });
const fmtValue = (v) => (typeof v === "number" && Number.isFinite(v) ? FerryCharts.short(v) : String(v ?? "–"));

// The sections of one job's MLflow run, and `update(active)`, which reads the run again when it is due: every
// ML_POLL_MS while the job is live, and once more after it ends. Failures show in the sections, never in the header.
function runView({ run_id: run, experiment_id: experiment }) {
  const status = h("p", { class: "muted small", id: "ml-status" });
  const latest = h("div", { id: "ml-latest" }), params = h("div", { id: "ml-params" });
  const charts = h("div", { class: "charts", id: "ml-charts" });
  const files = h("div", { id: "artifacts" });
  const expanded = new Set();
  const reload = h("button", { type: "button", id: "artifacts-reload", text: "Reload", onclick: () => { expanded.clear(); listRoot(); } });
  const sections = [
    h("section", { id: "job-ml" }, h("h2", { text: "ML metrics" }), status,
      h("div", { class: "grid2" }, h("div", {}, h("h3", { text: "Latest values" }), latest), h("div", {}, h("h3", { text: "Params" }), params)),
      charts),
    h("section", { id: "job-artifacts" }, h("div", { class: "row" }, h("h2", { text: "Artifacts" }), reload), files),
  ];
  const histories = new Map();
  let at = 0, wasActive = true, listed = false;
  const caught = (e, where, what) => {
    if (e instanceof Unauthenticated) throw e;
    where.replaceChildren(inlineError(`${what}: ${e.message}`));
  };

  async function update(active) {
    if (Date.now() - at < ML_POLL_MS || !(active || wasActive)) return;
    at = Date.now();
    const ended = wasActive && !active;
    wasActive = active;
    const relist = !listed || ended || (active && !expanded.size && !files.contains(document.activeElement));
    await Promise.all([metrics(), relist ? listRoot() : null]);
  }

  async function metrics() {
    let answer;
    try {
      answer = await api(`${MLFLOW}/runs/get?run_id=${encodeURIComponent(run)}`);
    } catch (e) { caught(e, status, "The run's metrics are not available"); return; }
    const info = answer.run.info || {}, data = answer.run.data || {};
    status.textContent = `MLflow run ${run} in experiment ${experiment}${info.status ? ", " + info.status.toLowerCase() : ""}.`;
    const ps = (data.params || []).slice().sort((a, b) => a.key.localeCompare(b.key));
    params.replaceChildren(table([{ label: "Param" }, { label: "Value" }], ps.map((p) => [p.key, p.value]), "No params logged."));
    const ms = (data.metrics || []).slice().sort((a, b) => a.key.localeCompare(b.key));
    latest.replaceChildren(table([{ label: "Metric" }, { label: "Latest", num: true }, { label: "Step", num: true }, { label: "Logged" }],
      ms.map((m) => [m.key, fmtValue(m.value), String(m.step ?? 0), fmtTime(Number(m.timestamp) * 1000)]), "Nothing logged yet."));
    if (!ms.length) {
      charts.replaceChildren(h("p", { class: "muted", id: "ml-none", text: "Nothing logged yet: metrics the job logs to its run appear here." }));
      return;
    }
    const drawn = ms.slice(0, ML_CHARTS_MAX);
    // Only a metric whose latest point changed is read again.
    await Promise.all(drawn.map(async (m) => {
      const seen = `${m.step}/${m.timestamp}/${m.value}`;
      if (histories.get(m.key)?.seen === seen) return;
      try {
        histories.set(m.key, { seen, ...(await history(m.key)) });
      } catch (e) {
        if (e instanceof Unauthenticated) throw e;
        histories.set(m.key, { seen: null, error: e.message });
      }
    }));
    charts.replaceChildren(...drawn.map((m) => metricChart(m.key, histories.get(m.key))),
      ...(ms.length > drawn.length ? [h("p", { class: "muted", text: `The first ${ML_CHARTS_MAX} of ${ms.length} metrics are drawn.` })] : []));
  }

  async function history(key) {
    const points = [];
    let token = "";
    do {
      const q = new URLSearchParams({ run_id: run, metric_key: key, max_results: String(Math.min(ML_PAGE, ML_POINTS_MAX - points.length)) });
      if (token) q.set("page_token", token);
      const page = await api(`${MLFLOW}/metrics/get-history?${q}`);
      for (const p of page.metrics || []) points.push([Number(p.step || 0), Number(p.value)]);
      token = page.next_page_token || "";
    } while (token && points.length < ML_POINTS_MAX);
    points.sort((a, b) => a[0] - b[0]);
    return { points, more: !!token };
  }

  function metricChart(key, hist) {
    if (hist.error) return inlineError(`The history of ${key} is not available: ${hist.error}`);
    const n = hist.points.length;
    return FerryCharts.xyChart({ title: `${key} by step (${hist.more ? `the first ${n} points` : plural(n, "point")})`,
      xLabel: "step", yLabel: key, integerX: true, series: [{ label: key, points: FerryCharts.downsample(hist.points, ML_DRAW_BUCKETS) }] });
  }

  // A folder's entries, relative to it: MLflow answers names within the folder, but a path from the run's root is
  // taken too.
  async function listing(sub) {
    const path = `${experiment}/${run}/artifacts${sub ? "/" + sub : ""}`;
    const answer = await api(`${ARTIFACTS}?path=${encodeURIComponent(path)}`);
    const strip = (p) => [`${path}/`, sub ? `${sub}/` : null].reduce((q, prefix) => (prefix && q.startsWith(prefix) ? q.slice(prefix.length) : q), p);
    return (answer.files || []).map((f) => ({ ...f, name: strip(f.path) }))
      .sort((a, b) => Number(!!b.is_dir) - Number(!!a.is_dir) || a.name.localeCompare(b.name));
  }

  const fileUrl = (rel) => `${ARTIFACTS}/${[experiment, run, "artifacts", ...rel.split("/")].map(encodeURIComponent).join("/")}`;

  async function listRoot() {
    try {
      const entries = await listing("");
      listed = true;
      files.replaceChildren(tree("", entries));
    } catch (e) { caught(e, files, "The artifacts are not available"); }
  }

  function tree(sub, entries) {
    if (!entries.length) return h("div", { class: "muted small", text: sub ? "(an empty folder)" : "No artifacts yet." });
    return h("ul", { class: "tree" }, entries.map((f) => {
      const rel = sub ? `${sub}/${f.name}` : f.name;
      if (!f.is_dir) {
        return h("li", {}, h("a", { href: fileUrl(rel), download: rel.split("/").pop(), text: f.name }),
          h("span", { class: "muted small", text: f.file_size != null ? ` ${fmtBytes(Number(f.file_size))}` : "" }));
      }
      const inside = h("div", {});
      const folder = h("button", { type: "button", class: "folder", "aria-expanded": "false", text: `${f.name}/`, onclick: async () => {
        const open = folder.getAttribute("aria-expanded") !== "true";
        folder.setAttribute("aria-expanded", String(open));
        if (!open) { expanded.delete(rel); inside.replaceChildren(); return; }
        expanded.add(rel);
        inside.replaceChildren(h("p", { class: "muted small", text: "Loading…" }));
        try { inside.replaceChildren(tree(rel, await listing(rel))); } catch (e) { caught(e, inside, `The folder ${rel} is not available`); }
      } });
      return h("li", {}, folder, inside);
    }));
  }

  return { sections, update };
}

function highlight(line, want) {
  const out = [], lower = line.toLowerCase(), w = want.toLowerCase();
  let i = 0;
  for (let j = lower.indexOf(w); j >= 0; j = lower.indexOf(w, i)) {
    out.push(line.slice(i, j), h("mark", { text: line.slice(j, j + w.length) }));
    i = j + w.length;
  }
  out.push(line.slice(i));
  return out;
}

function shellQuote(arg) {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, "'\\''")}'`;
}

// ---- Sweeps -------------------------------------------------------------------------------------------------------

// A live sweep is read again every few seconds; an ended one rarely (it no longer changes).
const SWEEP_POLL_MS = 3000;
const SWEEP_ENDED_POLL_MS = 60000;
const TRIAL_STATES = ["completed", "stopped", "failed", "running", "queued"];

const sweepLink = (s) => h("a", { href: `/sweeps/${s.id}`, text: String(s.id) });
const sweepEnded = (c) => c.completed + c.failed + c.stopped;
const sweepGoal = (s) => `${s.goal} ${s.objective}`;

// A bar of a sweep's trials by state, out of its maximum, with the same counts in words.
function sweepProgress(s, id) {
  const c = s.counts, bar = h("span", { class: "progress", "aria-hidden": "true" });
  for (const state of TRIAL_STATES) {
    if (!c[state]) continue;
    const part = h("span", { class: `trial-${state}`, title: `${c[state]} ${state}` });
    part.style.width = `${(100 * c[state]) / Math.max(1, s.max_trials)}%`;
    bar.append(part);
  }
  const words = TRIAL_STATES.filter((k) => c[k]).map((k) => `${c[k]} ${k}`).join(", ");
  return h("span", { id, role: "progressbar", "aria-valuemin": "0", "aria-valuemax": String(s.max_trials),
    "aria-valuenow": String(sweepEnded(c)), "aria-valuetext": `${sweepEnded(c)} of ${s.max_trials} trials ended` },
  bar, `${sweepEnded(c)} of ${plural(s.max_trials, "trial")} ended${words ? ` (${words})` : ""}`);
}

function sweepsPage(main) {
  const holder = h("div", { id: "sweeps" });
  main.replaceChildren(h("h1", { text: "Sweeps" }),
    h("p", { class: "muted", text: "Hyperparameter sweeps, newest first; start one with `ferry sweep`." }), holder);
  poll(async () => {
    const list = (await api("/api/v1/sweeps")).sweeps.slice().sort((a, b) => b.id - a.id);
    holder.replaceChildren(table([{ label: "ID", num: true }, { label: "Name" }, { label: "State" }, { label: "User" },
      { label: "Method" }, { label: "Objective" }, { label: "Progress" }, { label: "Best", num: true }, { label: "Created" }],
    list.map((s) => [sweepLink(s), s.name || "", stateBadge(s.state), s.owner, s.method + (s.early_stopping ? ` + ${s.early_stopping}` : ""),
      sweepGoal(s), sweepProgress(s), s.best_value != null ? `${fmtValue(s.best_value)} (trial ${s.best_trial})` : "–", fmtTime(s.created_at_us)]),
    "No sweeps yet."));
  });
}

// The table's columns for a sweep's trials: the fixed ones around one per parameter.
function trialColumns(paramKeys, best) {
  const text = (v) => (v === null || v === undefined ? "–" : typeof v === "number" ? fmtValue(v) : String(v));
  return [
    { key: "index", label: "Trial", num: true, value: (t) => t.index,
      cell: (t) => (t.index === best ? h("span", {}, String(t.index), h("strong", { class: "best-mark", text: " ★ best" })) : String(t.index)) },
    { key: "state", label: "State", value: (t) => TRIAL_STATES.indexOf(t.state), cell: (t) => stateBadge(t.state) },
    ...paramKeys.map((k) => ({ key: `param:${k}`, label: k, num: true, value: (t) => t.params[k] ?? null, cell: (t) => text(t.params[k]) })),
    { key: "value", label: "Objective", num: true, value: (t) => t.value, cell: (t) => text(t.value) },
    { key: "step", label: "Step", num: true, value: (t) => t.step, cell: (t) => text(t.step) },
    { key: "runtime", label: "Runtime", num: true, value: (t) => t.runtime_s, cell: (t) => (t.runtime_s == null ? "–" : fmtDuration(t.runtime_s * 1000)) },
    { key: "stop", label: "Stop reason", value: (t) => t.stop_reason || "", cell: (t) => t.stop_reason || "–" },
    { key: "job", label: "Job", num: true, value: (t) => t.job_id, cell: (t) => (t.job_id != null ? jobLink({ id: t.job_id }) : "–") },
  ];
}

// Compares two cell values: absent last, numbers as numbers, the rest as text.
function compareValues(x, y) {
  const absent = (v) => v === null || v === undefined || v === "";
  if (absent(x) || absent(y)) return absent(x) - absent(y);
  return typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y), undefined, { numeric: true });
}

// The objective of every trial that logged one, by trial index, marked by how the trial stands, and the best
// completed value so far.
function sweepChart(s) {
  const minimize = s.goal !== "maximize";
  const point = (t) => [t.index, t.value, `trial ${t.index} (${t.state}): ${fmtValue(t.value)}${t.step != null ? ` at step ${t.step}` : ""}`];
  const trials = s.trials.filter((t) => typeof t.value === "number").sort((a, b) => a.index - b.index);
  const of = (state) => trials.filter((t) => t.state === state).map(point);
  let best = null;
  const bestLine = trials.filter((t) => t.state === "completed").map((t) => {
    if (best === null || (minimize ? t.value < best : t.value > best)) best = t.value;
    return [t.index, best];
  });
  return FerryCharts.xyChart({ title: `${s.objective} by trial (${s.goal})`, xLabel: "trial", yLabel: s.objective, integerX: true, padY: true,
    series: [
      { label: "completed", points: of("completed"), line: false, marker: "circle", color: "#0072B2" },
      { label: "stopped early", points: of("stopped"), line: false, marker: "triangle", color: "#E69F00" },
      { label: "failed", points: of("failed"), line: false, marker: "cross", color: "#D55E00" },
      { label: "running (so far)", points: of("running"), line: false, marker: "ring", color: "#009E73" },
      { label: `best so far (${minimize ? "lowest" : "highest"})`, points: bestLine, stepped: true, color: "#000000", dash: "6 3" },
    ] });
}

function sweepPage(main, id) {
  const title = h("h1", { text: `Sweep ${id}` });
  const summary = h("dl", { class: "spec", id: "sweep-summary" });
  const best = h("div", { id: "sweep-best" }), progress = h("p", { id: "sweep-progress-holder" });
  const chart = h("div", { id: "sweep-chart" }), trials = h("div", { id: "trials" }), count = h("p", { class: "muted small", id: "trials-count" });
  const specView = h("pre", { class: "native", id: "sweep-spec" });
  const actions = h("div", { class: "row actions", id: "sweep-actions" });
  const cancelResult = h("p", { id: "cancel-result", role: "status", "aria-live": "polite" });
  let sweep = null, sort = { key: "index", desc: false }, shownTrials = "", shownActions = "", confirming = false, cancelling = false, refresh;
  const cancelButton = h("button", { type: "button", id: "cancel-sweep", class: "danger", text: "Cancel sweep",
    onclick: () => { confirming = true; renderActions(); confirmButton.focus(); } });
  const confirmButton = h("button", { type: "button", id: "cancel-confirm", class: "danger-strong", text: `Yes, cancel sweep ${id}`,
    onclick: () => cancelSweep() });
  const keepButton = h("button", { type: "button", id: "cancel-keep", text: "No, keep it",
    onclick: () => { confirming = false; renderActions(); cancelButton.focus(); } });
  main.replaceChildren(title, actions, cancelResult, progress, best,
    h("div", { class: "grid2" }, h("section", {}, h("h2", { text: "Sweep" }), summary),
      h("section", {}, h("h2", { text: "Objective by trial" }), chart)),
    h("h2", { text: "Trials" }), count, trials,
    h("details", {}, h("summary", { text: "The sweep file" }), specView));

  function renderActions() {
    const live = sweep && sweep.state === "running";
    if (!live && !cancelling) confirming = false;
    const want = confirming ? "confirm" : live ? "cancel" : "none";
    if (want === shownActions) return;
    shownActions = want;
    actions.replaceChildren(...(confirming
      ? [h("span", { id: "cancel-question", text: `Cancel sweep ${id}? Its running trials are stopped and no new ones start.` }), confirmButton, keepButton]
      : live ? [cancelButton] : []));
  }

  async function cancelSweep() {
    cancelling = true;
    confirmButton.disabled = keepButton.disabled = true;
    cancelResult.className = "";
    cancelResult.textContent = `Cancelling sweep ${id}…`;
    try {
      // Signed by the session cookie; the browser adds this page's Origin, which the server requires.
      const res = await fetch(`/api/v1/sweeps/${id}/cancel`, { method: "POST", credentials: "same-origin", headers: { Accept: "application/json" } });
      if (res.status === 401) { location.assign("/login"); return; }
      let body = null;
      try { body = await res.json(); } catch (_) { /* not JSON */ }
      if (!res.ok) throw new Error((body && body.message) || `${res.status} ${res.statusText}`);
      cancelResult.textContent = `Cancel requested for sweep ${id}.`;
    } catch (e) {
      cancelResult.className = "error";
      cancelResult.textContent = `Sweep ${id} was not cancelled: ${e.message}`;
    } finally {
      cancelling = false; confirming = false;
      confirmButton.disabled = keepButton.disabled = false;
      renderActions();
      refresh();
    }
  }

  // The trials' table, rebuilt only when the trials or the order changed, in one pass (no request per row).
  function renderTrials() {
    const keys = [...new Set(sweep.trials.flatMap((t) => Object.keys(t.params || {})))].sort();
    const columns = trialColumns(keys, sweep.best_trial);
    const state = JSON.stringify([sweep.trials, sweep.best_trial, sort]);
    if (state === shownTrials) return;
    shownTrials = state;
    const col = columns.find((c) => c.key === sort.key) || columns[0];
    const rows = sweep.trials.slice().sort((a, b) => {
      const c = compareValues(col.value(a), col.value(b));
      return (sort.desc && c && col.value(a) != null && col.value(b) != null ? -c : c) || a.index - b.index;
    });
    count.textContent = `${plural(rows.length, "trial")}${sort.key !== "index" || sort.desc ? `, sorted by ${col.label.toLowerCase()}` : ""}`;
    const head = h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.num ? "num" : null,
      "aria-sort": c.key === sort.key ? (sort.desc ? "descending" : "ascending") : null },
    h("button", { type: "button", class: "sort", "data-sort": c.key,
      onclick: () => { sort = { key: c.key, desc: sort.key === c.key ? !sort.desc : false }; renderTrials();
        trials.querySelector(`button[data-sort="${CSS.escape(c.key)}"]`).focus(); } },
    c.label + (c.key === sort.key ? (sort.desc ? " ▼" : " ▲") : "")))));
    const body = rows.map((t) => h("tr", { "data-trial": t.index, class: t.index === sweep.best_trial ? "best" : null },
      columns.map((c) => h("td", { class: c.num ? "num" : null }, c.cell(t)))));
    if (!rows.length) body.push(h("tr", {}, h("td", { colspan: columns.length, class: "muted", text: "No trials yet." })));
    trials.replaceChildren(h("table", { id: "trials-table" }, h("thead", {}, head), h("tbody", {}, body)));
  }

  refresh = poll(async () => {
    sweep = await api(`/api/v1/sweeps/${id}`);
    document.title = `Sweep ${id} · Ferry`;
    title.replaceChildren(`Sweep ${id}${sweep.name ? " · " + sweep.name : ""} `, stateBadge(sweep.state));
    if (!cancelling) renderActions();
    progress.replaceChildren(sweepProgress(sweep, "sweep-progress"));
    const top = sweep.trials.find((t) => t.index === sweep.best_trial);
    best.replaceChildren(sweep.best_trial != null
      ? h("p", { class: "best-trial" }, h("strong", { text: "Best trial: " }), `trial ${sweep.best_trial}, ${sweep.objective} = ${fmtValue(sweep.best_value)} (${sweep.goal})`,
        top && top.job_id != null ? h("span", {}, " · job ", jobLink({ id: top.job_id })) : null,
        top ? h("span", { class: "muted", text: ` · ${Object.entries(top.params).map(([k, v]) => `${k}=${fmtValue(v)}`).join(", ")}` }) : null)
      : h("p", { class: "muted", text: "No trial has completed with a value yet." }));
    const pairs = [["Method", sweep.method], ["Early stopping", sweep.early_stopping || "none"], ["Objective", sweepGoal(sweep)],
      ["Trials", `at most ${sweep.max_trials}, ${sweep.max_parallel} at a time`], ["Owner", sweep.owner], ["MLflow experiment", sweep.experiment_id],
      ["Created", fmtTime(sweep.created_at_us)], ["Finished", fmtTime(sweep.finished_at_us)], sweep.message && ["Message", sweep.message]];
    summary.replaceChildren(...pairs.filter(Boolean).flatMap(([k, v]) => [h("dt", { text: k }), h("dd", {}, v)]));
    specView.textContent = sweep.spec || "";
    chart.replaceChildren(sweepChart(sweep));
    renderTrials();
  }, () => (!sweep || sweep.state === "running" ? SWEEP_POLL_MS : SWEEP_ENDED_POLL_MS));
}

// ---- Usage --------------------------------------------------------------------------------------------------------

function usagePage(main) {
  const params = new URLSearchParams(location.search);
  const f = { by: params.get("by") || "user", period: params.get("period") || "30d", from: params.get("from") || "", to: params.get("to") || "" };
  const result = h("div", { id: "usage" }), csv = h("a", { id: "usage-csv", text: "Download as CSV" }), note = h("p", { class: "muted small" });
  let refresh;
  const periodSelect = h("select", { name: "period", onchange: (e) => { f.period = e.target.value; refresh(); } },
    [["24h", "last day"], ["7d", "last 7 days"], ["30d", "last 30 days"], ["90d", "last 90 days"], ["365d", "last year"], ["custom", "dates below"]]
      .map(([v, t]) => h("option", { value: v, selected: v === f.period, text: t })));
  const date = (key, label) => h("label", {}, label, h("input", { type: "date", name: key, value: f[key],
    onchange: (e) => { f[key] = e.target.value; if (f.from && f.to) { f.period = "custom"; periodSelect.value = "custom"; } refresh(); } }));
  main.replaceChildren(h("h1", { text: "Usage" }),
    h("p", { class: "muted", text: "GPU-hours and CPU-hours allocated to jobs against what they measured using, for a period." }),
    h("form", { class: "filters", onsubmit: (e) => e.preventDefault() },
      h("label", {}, "By", h("select", { name: "by", onchange: (e) => { f.by = e.target.value; refresh(); } },
        ["user", "project", "team", "pool"].map((v) => h("option", { value: v, selected: v === f.by, text: v })))),
      h("label", {}, "Period", periodSelect), date("from", "From (your time zone)"), date("to", "To, inclusive"), csv),
    note, result);

  refresh = poll(async () => {
    const q = new URLSearchParams({ by: f.by });
    if (f.period === "custom" && f.from && f.to) {
      const end = new Date(`${f.to}T00:00`);
      end.setDate(end.getDate() + 1);
      q.set("start", new Date(`${f.from}T00:00`).toISOString());
      q.set("end", end.toISOString());
    } else {
      // No `end`: the API's default is now.
      q.set("start", f.period === "custom" ? "30d" : f.period);
    }
    const page = new URLSearchParams({ by: f.by, period: f.period });
    if (f.from) page.set("from", f.from);
    if (f.to) page.set("to", f.to);
    history.replaceState(null, "", `/usage?${page}`);
    csv.href = `/api/v1/usage?${q}&format=csv`;
    csv.setAttribute("download", `ferry-usage-by-${f.by}.csv`);
    let answer;
    try {
      answer = await api(`/api/v1/usage?${q}`);
    } catch (e) {
      if (e instanceof Unauthenticated) throw e;
      note.textContent = "";
      result.replaceChildren(h("p", { class: "error", id: "usage-error", role: "alert",
        text: `The usage report is not available: ${e.message}` }));
      return;
    }
    note.textContent = `From ${fmtTime(answer.start_us)} to ${fmtTime(answer.end_us)}. "Used" is measured; "no data" means nothing was measured, not zero use.`;
    const hours = (v) => (v === null || v === undefined ? noData() : num(v, v < 10 ? 2 : 1));
    const share = (used, alloc) => (used === null || used === undefined || !alloc ? noData() : utilisation((100 * used) / alloc, true));
    const rows = answer.rows.map((r) => [r.id, hours(r.gpu_hours_allocated), hours(r.gpu_hours_used), share(r.gpu_hours_used, r.gpu_hours_allocated),
      hours(r.cpu_hours_allocated), hours(r.cpu_hours_used), share(r.cpu_hours_used, r.cpu_hours_allocated)]);
    const sum = (k) => answer.rows.reduce((a, r) => a + (r[k] || 0), 0);
    const anyUsed = (k) => answer.rows.some((r) => r[k] !== null && r[k] !== undefined);
    if (answer.rows.length > 1) {
      rows.push([h("strong", { text: "total" }), num(sum("gpu_hours_allocated"), 1), anyUsed("gpu_hours_used") ? num(sum("gpu_hours_used"), 1) : noData(), "",
        num(sum("cpu_hours_allocated"), 1), anyUsed("cpu_hours_used") ? num(sum("cpu_hours_used"), 1) : noData(), ""]);
    }
    result.replaceChildren(table([{ label: f.by }, { label: "GPU-hours allocated", num: true }, { label: "GPU-hours used", num: true },
      { label: "GPU used / allocated" }, { label: "CPU-hours allocated", num: true }, { label: "CPU-hours used", num: true },
      { label: "CPU used / allocated" }], rows, "Nothing was allocated in this period."));
  }, 30000);
}

// ---- Routing ------------------------------------------------------------------------------------------------------

(function start() {
  const main = document.getElementById("main");
  const path = location.pathname.replace(/\/+$/, "") || "/";
  const job = path.match(/^\/jobs\/(\d+)$/), sweep = path.match(/^\/sweeps\/(\d+)$/);
  const page = job ? "jobs" : sweep ? "sweeps" : { "/": "overview", "/nodes": "nodes", "/jobs": "jobs", "/sweeps": "sweeps", "/usage": "usage" }[path];
  for (const a of document.querySelectorAll("nav a")) if (a.dataset.page === page) a.setAttribute("aria-current", "page");
  const titles = { overview: "Overview", nodes: "Nodes", jobs: "Jobs", sweeps: "Sweeps", usage: "Usage" };
  document.title = `${job ? "Job " + job[1] : sweep ? "Sweep " + sweep[1] : titles[page] || "Not found"} · Ferry`;
  if (job) jobPage(main, Number(job[1]));
  else if (sweep) sweepPage(main, Number(sweep[1]));
  else if (page === "sweeps") sweepsPage(main);
  else if (page === "overview") overview(main);
  else if (page === "nodes") nodesPage(main);
  else if (page === "jobs") jobsPage(main);
  else if (page === "usage") usagePage(main);
  else main.replaceChildren(h("p", { text: "No such page." }));
})();

// Ferry dashboard charts: SVG line charts and heatmaps drawn from /api/v1/series answers, and charts of numbers
// against numbers (MLflow metrics by step, a sweep's objective by trial) or of marks in time (an elastic pool's burst
// decisions). No library: a few functions that build SVG elements. Times are shown in the viewer's time zone; every
// axis names its unit; colours come from the Okabe-Ito palette and each line also has its own dash pattern (each mark
// its own shape), so no meaning rests on colour alone.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone;
const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#000000"];
const DASHES = ["", "6 3", "2 2", "8 3 2 3", "1 3", "4 4", ""];

function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined && v !== null) el.setAttribute(k, v);
  for (const c of children) if (c !== null && c !== undefined) el.append(c);
  return el;
}

// Round numbers for an axis from 0 to at least `max`.
function niceTicks(max, count) {
  if (!(max > 0)) max = 1;
  const raw = max / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const ticks = [];
  for (let v = 0; v <= max + step * 0.001; v += step) ticks.push(v);
  if (ticks[ticks.length - 1] < max) ticks.push(ticks[ticks.length - 1] + step);
  return ticks;
}

// Time labels for a range: clock times within a day, dates and times over longer ranges.
function timeFormatter(spanMs) {
  const opts = spanMs > 2 * 86400e3 ? { month: "short", day: "numeric" }
    : spanMs > 86400e3 / 2 ? { weekday: "short", hour: "2-digit", minute: "2-digit" }
    : { hour: "2-digit", minute: "2-digit" };
  return new Intl.DateTimeFormat(undefined, opts);
}

function timeTicks(startMs, endMs, count) {
  const span = endMs - startMs;
  const steps = [60e3, 300e3, 600e3, 900e3, 1800e3, 3600e3, 7200e3, 4 * 3600e3, 6 * 3600e3, 12 * 3600e3, 86400e3,
    2 * 86400e3, 7 * 86400e3];
  const step = steps.find((s) => span / s <= count) || 7 * 86400e3;
  // Align to the step in local time, so hour ticks fall on the hour where the viewer is.
  const offset = new Date(startMs).getTimezoneOffset() * 60e3;
  let t = Math.ceil((startMs - offset) / step) * step + offset;
  const ticks = [];
  for (; t <= endMs; t += step) ticks.push(t);
  return ticks;
}

// A line chart. opts: { start_us, step_s, series: [{label, values, color?, dash?}], unit, format?(v), yMax?,
// width?, height?, title }. Returns a figure with the chart and its legend.
function lineChart(opts) {
  const W = opts.width || 640, H = opts.height || 220;
  const m = { l: 58, r: 30, t: 10, b: 40 };
  const n = Math.max(0, ...opts.series.map((s) => s.values.length));
  const startMs = opts.start_us / 1000, stepMs = opts.step_s * 1000;
  const endMs = startMs + Math.max(1, n - 1) * stepMs;
  let max = opts.yMax || 0;
  for (const s of opts.series) for (const v of s.values) if (v !== null && v > max) max = v;
  const ticks = niceTicks(max, 4);
  const top = ticks[ticks.length - 1];
  const x = (ms) => m.l + ((ms - startMs) / Math.max(1, endMs - startMs)) * (W - m.l - m.r);
  const y = (v) => H - m.b - (v / top) * (H - m.t - m.b);
  // Three significant digits, so small ranges (0.25, 0.0012) keep distinct labels instead of all reading "0".
  const fmt = opts.format || ((v) => String(Number(v.toPrecision(3))));
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": opts.title });
  chart.append(svg("title", {}, opts.title));
  const grid = svg("g", { class: "grid" }), axis = svg("g", { class: "axis" });
  for (const t of ticks) {
    grid.append(svg("line", { x1: m.l, x2: W - m.r, y1: y(t), y2: y(t) }));
    axis.append(svg("text", { x: m.l - 6, y: y(t) + 4, "text-anchor": "end" }, fmt(t)));
  }
  const tf = timeFormatter(endMs - startMs);
  for (const t of timeTicks(startMs, endMs, 6)) {
    axis.append(svg("line", { x1: x(t), x2: x(t), y1: H - m.b, y2: H - m.b + 4 }));
    axis.append(svg("text", { x: x(t), y: H - m.b + 16, "text-anchor": "middle" }, tf.format(new Date(t))));
  }
  axis.append(svg("line", { x1: m.l, x2: m.l, y1: m.t, y2: H - m.b }));
  axis.append(svg("line", { x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b }));
  axis.append(svg("text", { x: (m.l + W - m.r) / 2, y: H - 4, "text-anchor": "middle" }, `time (${ZONE})`));
  axis.append(svg("text", { x: 12, y: (m.t + H - m.b) / 2, "text-anchor": "middle",
    transform: `rotate(-90 12 ${(m.t + H - m.b) / 2})` }, opts.unit));
  chart.append(grid, axis);
  const legend = document.createElement("div");
  legend.className = "legend";
  opts.series.forEach((s, i) => {
    const color = s.color || PALETTE[i % PALETTE.length], dash = s.dash ?? DASHES[i % DASHES.length];
    let d = "", pen = false;
    s.values.forEach((v, j) => {
      if (v === null || v === undefined) { pen = false; return; }
      const px = x(startMs + j * stepMs).toFixed(1), py = y(v).toFixed(1);
      d += `${pen ? "L" : "M"}${px} ${py}`;
      const alone = !pen && (s.values[j + 1] === null || s.values[j + 1] === undefined);
      if (alone) chart.append(svg("circle", { cx: px, cy: py, r: 2.5, fill: color }));
      pen = true;
    });
    if (d) chart.append(svg("path", { d, fill: "none", stroke: color, "stroke-width": 2, "stroke-dasharray": dash || null }));
    const swatch = svg("svg", { width: 26, height: 10, "aria-hidden": "true" },
      svg("line", { x1: 0, x2: 26, y1: 5, y2: 5, stroke: color, "stroke-width": 2, "stroke-dasharray": dash || null }));
    const item = document.createElement("span");
    const measured = s.values.some((v) => v !== null && v !== undefined);
    item.append(swatch, s.label + (measured ? "" : " (no data)"));
    legend.append(item);
  });
  return figureOf(opts.title, chart, legend);
}

// A chart with its caption above and its legend below.
function figureOf(title, chart, legend) {
  const figure = document.createElement("figure");
  figure.className = "chart-figure";
  figure.style.margin = "0";
  const caption = document.createElement("figcaption");
  caption.textContent = title;
  caption.className = "small muted";
  figure.append(caption, chart, legend);
  return figure;
}

// Round numbers from at most `lo` to at least `hi` (of any sign) for an axis, about `count` steps, none finer than
// `minStep` (1 for steps and trial numbers).
function rangeTicks(lo, hi, count, minStep) {
  if (!(hi > lo) && minStep) hi = lo + minStep;
  else if (!(hi > lo)) { const pad = Math.abs(lo) * 0.1 || 1; lo -= pad; hi += pad; }
  const raw = Math.max((hi - lo) / count, minStep || 0);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw && (!minStep || Number.isInteger(s))) || raw;
  const first = Math.floor(lo / step + 1e-9) * step, ticks = [];
  for (let i = 0; i <= 100; i++) {
    const v = Number((first + i * step).toPrecision(12));
    ticks.push(v);
    if (v >= hi - step * 1e-9) break;
  }
  return ticks;
}

// A number for an axis or a table: four significant digits, exponents for the very large and the very small.
function short(v) {
  const a = Math.abs(v);
  return a >= 1e6 || (a > 0 && a < 1e-3) ? v.toExponential(2) : String(Number(v.toPrecision(4)));
}

// At most about 2 × buckets of a line's points (sorted by x): each bucket's lowest and highest, so spikes survive.
function downsample(points, buckets) {
  if (points.length <= 2 * buckets) return points;
  const x0 = points[0][0], span = points[points.length - 1][0] - x0 || 1, out = [];
  let bucket = -1, lo = null, hi = null;
  const flush = () => { if (lo) out.push(...(lo === hi ? [lo] : lo[0] <= hi[0] ? [lo, hi] : [hi, lo])); };
  for (const p of points) {
    const k = Math.min(buckets - 1, Math.floor(((p[0] - x0) / span) * buckets));
    if (k !== bucket) { flush(); bucket = k; lo = hi = p; continue; }
    if (p[1] < lo[1]) lo = p;
    if (p[1] > hi[1]) hi = p;
  }
  flush();
  return out;
}

// A point's mark: its shape, not only its colour, says which series it belongs to.
function marker(kind, x, y, color, title) {
  const t = title ? svg("title", {}, title) : null;
  if (kind === "triangle") return svg("path", { d: `M${x} ${y - 5}L${x + 4.5} ${y + 3.5}L${x - 4.5} ${y + 3.5}Z`, fill: color }, t);
  if (kind === "cross") return svg("path", { d: `M${x - 4} ${y - 4}L${x + 4} ${y + 4}M${x - 4} ${y + 4}L${x + 4} ${y - 4}`, stroke: color, "stroke-width": 2 }, t);
  if (kind === "ring") return svg("circle", { cx: x, cy: y, r: 4, fill: "#fff", stroke: color, "stroke-width": 1.5 }, t);
  return svg("circle", { cx: x, cy: y, r: kind === "dot" ? 2.5 : 4, fill: color }, t);
}

// A chart of numbers against numbers (a metric against its step, an objective against the trial), or of marks in
// time. opts: { title, xLabel, yLabel, integerX?, integerY? (counts: from 0, whole ticks), padY?, time? (x in
// milliseconds since the epoch, on a clock axis in the viewer's time zone), xRange? ([from, to]: the x axis spans at
// least this), width?, height?, series: [{ label, points: [[x, y, title?]], color?, dash?, line? (default true),
// stepped?, marker? ("circle", "ring", "triangle", "cross") }] }. Points whose y is not a finite number are gaps.
// Returns a figure with the chart and its legend.
function xyChart(opts) {
  const W = opts.width || 640, H = opts.height || 220;
  const m = { l: 64, r: 20, t: 10, b: 40 };
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (const s of opts.series) for (const [px, py] of s.points) {
    if (!Number.isFinite(py) || !Number.isFinite(px)) continue;
    x0 = Math.min(x0, px); x1 = Math.max(x1, px); y0 = Math.min(y0, py); y1 = Math.max(y1, py);
  }
  if (opts.xRange) { x0 = Math.min(x0, opts.xRange[0]); x1 = Math.max(x1, opts.xRange[1]); }
  if (x0 > x1) { x0 = 0; x1 = 1; }
  if (y0 > y1) { y0 = 0; y1 = 1; }
  if (opts.time && !(x1 - x0 >= 120e3)) { x0 -= 60e3; x1 += 60e3; }
  // Nor is a mark at either end of a time axis, which spans its range exactly.
  if (opts.time) { const pad = (x1 - x0) * 0.02; x0 -= pad; x1 += pad; }
  // Marks on the frame's edge are hard to see: a chart of marks keeps a margin above and below them.
  if (opts.padY && y1 > y0) { const pad = (y1 - y0) * 0.08; y0 -= pad; y1 += pad; }
  // A time axis spans the points (or the range) exactly, its ticks on round clock times; a number axis is widened to
  // round ticks. Counts start at 0 and keep half a step's margin above the highest.
  const xt = opts.time ? timeTicks(x0, x1, 6) : rangeTicks(x0, x1, 6, opts.integerX ? 1 : 0);
  const yt = opts.integerY ? rangeTicks(Math.min(0, y0), Math.max(1, y1) + 0.5, 4, 1) : rangeTicks(y0, y1, 4, 0);
  const [xa, xb] = opts.time ? [x0, x1] : [xt[0], xt[xt.length - 1]];
  const [ya, yb] = [yt[0], yt[yt.length - 1]];
  const tf = opts.time ? timeFormatter(x1 - x0) : null;
  const x = (v) => (m.l + ((v - xa) / (xb - xa)) * (W - m.l - m.r)).toFixed(1);
  const y = (v) => (H - m.b - ((v - ya) / (yb - ya)) * (H - m.t - m.b)).toFixed(1);
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": opts.title });
  chart.append(svg("title", {}, opts.title));
  const grid = svg("g", { class: "grid" }), axis = svg("g", { class: "axis" });
  for (const t of yt) {
    grid.append(svg("line", { x1: m.l, x2: W - m.r, y1: y(t), y2: y(t) }));
    axis.append(svg("text", { x: m.l - 6, y: Number(y(t)) + 4, "text-anchor": "end" }, short(t)));
  }
  for (const t of xt) {
    axis.append(svg("line", { x1: x(t), x2: x(t), y1: H - m.b, y2: H - m.b + 4 }));
    axis.append(svg("text", { x: x(t), y: H - m.b + 16, "text-anchor": "middle" }, tf ? tf.format(new Date(t)) : short(t)));
  }
  axis.append(svg("line", { x1: m.l, x2: m.l, y1: m.t, y2: H - m.b }));
  axis.append(svg("line", { x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b }));
  axis.append(svg("text", { x: (m.l + W - m.r) / 2, y: H - 4, "text-anchor": "middle" },
    opts.xLabel || (opts.time ? `time (${ZONE})` : "")));
  axis.append(svg("text", { x: 12, y: (m.t + H - m.b) / 2, "text-anchor": "middle",
    transform: `rotate(-90 12 ${(m.t + H - m.b) / 2})` }, opts.yLabel));
  chart.append(grid, axis);
  const legend = document.createElement("div");
  legend.className = "legend";
  opts.series.forEach((s, i) => {
    const color = s.color || PALETTE[i % PALETTE.length], dash = s.dash ?? DASHES[i % DASHES.length];
    const line = s.line !== false, finite = s.points.filter((p) => Number.isFinite(p[1]));
    if (line) {
      let d = "", pen = false, lastY = null;
      for (const [px, py] of s.points) {
        if (!Number.isFinite(py)) { pen = false; continue; }
        d += !pen ? `M${x(px)} ${y(py)}` : s.stepped ? `H${x(px)}V${y(py)}` : `L${x(px)} ${y(py)}`;
        pen = true; lastY = py;
      }
      if (s.stepped && lastY !== null) d += `H${x(xb)}`;
      if (d) chart.append(svg("path", { d, fill: "none", stroke: color, "stroke-width": 2, "stroke-dasharray": dash || null }));
      if (finite.length === 1 && !s.marker) chart.append(marker("dot", x(finite[0][0]), y(finite[0][1]), color));
    }
    if (s.marker) {
      const g = svg("g", {});
      for (const [px, py, title] of finite) g.append(marker(s.marker, Number(x(px)), Number(y(py)), color, title));
      chart.append(g);
    }
    const swatch = svg("svg", { width: 26, height: 10, "aria-hidden": "true" },
      line ? svg("line", { x1: 0, x2: 26, y1: 5, y2: 5, stroke: color, "stroke-width": 2, "stroke-dasharray": dash || null }) : null,
      s.marker ? marker(s.marker, 13, 5, color) : null);
    const item = document.createElement("span");
    item.append(swatch, s.label + (finite.length ? "" : " (none)"));
    legend.append(item);
  });
  return figureOf(opts.title, chart, legend);
}

// Sequential colours from viridis (colour-blind-safe, readable in greyscale) for 0-100%.
const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
function viridis(percent) {
  const t = Math.max(0, Math.min(1, percent / 100)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(t)), f = t - i;
  const c = VIRIDIS[i].map((a, k) => Math.round(a + (VIRIDIS[i + 1][k] - a) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function hatchPattern(id) {
  return svg("pattern", { id, width: 6, height: 6, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" },
    svg("rect", { width: 6, height: 6, fill: "#ffffff" }), svg("line", { x1: 0, y1: 0, x2: 0, y2: 6, stroke: "#9aa3ad", "stroke-width": 3 }));
}

// A heatmap: rows = opts.rows [{label, values}], columns = time steps from start_us every step_s; values are
// percent or null (no data: hatched, never coloured as 0%).
function heatmap(opts) {
  const cols = Math.max(1, ...opts.rows.map((r) => r.values.length));
  const cw = Math.max(8, Math.min(24, Math.floor(880 / cols))), ch = 18;
  const m = { l: 110, r: 44, t: 8, b: 36 };
  const W = m.l + cols * cw + m.r, H = m.t + opts.rows.length * ch + m.b;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "heatmap", role: "img",
    "aria-label": opts.title });
  root.append(svg("title", {}, opts.title), svg("defs", {}, hatchPattern("nodata-hatch")));
  const startMs = opts.start_us / 1000, stepMs = opts.step_s * 1000;
  const full = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
  opts.rows.forEach((row, r) => {
    const y = m.t + r * ch;
    root.append(svg("text", { x: m.l - 6, y: y + ch - 5, "text-anchor": "end" }, row.label));
    for (let c = 0; c < cols; c++) {
      const v = row.values[c];
      const fill = v === null || v === undefined ? "url(#nodata-hatch)" : viridis(v);
      const when = full.format(new Date(startMs + c * stepMs));
      const text = v === null || v === undefined ? "no data" : `${Math.round(v)}%`;
      root.append(svg("rect", { x: m.l + c * cw, y, width: cw - 1, height: ch - 1, fill },
        svg("title", {}, `${row.label} at ${when}: ${text}`)));
    }
  });
  const tf = timeFormatter(cols * stepMs);
  const endMs = startMs + cols * stepMs;
  for (const t of timeTicks(startMs, endMs, 8)) {
    const x = m.l + ((t - startMs) / stepMs) * cw;
    root.append(svg("line", { x1: x, x2: x, y1: H - m.b, y2: H - m.b + 4, stroke: "#8a939e" }));
    root.append(svg("text", { x, y: H - m.b + 15, "text-anchor": "middle" }, tf.format(new Date(t))));
  }
  root.append(svg("text", { x: m.l + (cols * cw) / 2, y: H - 4, "text-anchor": "middle" }, `time (${ZONE}), ${opts.step_label}`));
  const legend = svg("svg", { viewBox: "0 0 480 30", width: 480, height: 30, role: "img",
    "aria-label": "Legend: GPU utilisation from 0% to 100%; hatched cells have no data" });
  legend.append(svg("defs", {}, hatchPattern("nodata-hatch-legend")));
  legend.append(svg("text", { x: 0, y: 19 }, "GPU utilisation (%):"));
  [0, 25, 50, 75, 100].forEach((p, i) => {
    legend.append(svg("rect", { x: 150 + i * 48, y: 4, width: 20, height: 20, fill: viridis(p), stroke: "#8a939e" }));
    legend.append(svg("text", { x: 173 + i * 48, y: 19 }, `${p}`));
  });
  legend.append(svg("rect", { x: 400, y: 4, width: 20, height: 20, fill: "url(#nodata-hatch-legend)", stroke: "#8a939e" }));
  legend.append(svg("text", { x: 424, y: 19 }, "no data"));
  const figure = document.createElement("figure");
  figure.style.margin = "0";
  figure.append(root, legend);
  return figure;
}

window.FerryCharts = { lineChart, heatmap, xyChart, downsample, short };

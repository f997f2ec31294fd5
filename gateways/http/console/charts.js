// Charts drawn as SVG by hand: a line chart over time and a bar chart. No library:
// the console ships as plain files (docs/console.md). Every chart is an
// <svg class="chart"> whose data lines are <path class="series"> elements.

const SVG = "http://www.w3.org/2000/svg";
export const COLORS = ["#2f6fb0", "#d1603d", "#3a9a5b", "#8c5bb5", "#c49a1b", "#3aa0a6",
                       "#b5476f", "#6b7c2f", "#5a5a5a", "#1b7f9c"];

function el(name, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== null) node.textContent = text;
  return node;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 4, 8, 10]) if (m * p >= v) return m * p;  // a quarter of each is round
  return 10 * p;
}

export function formatNumber(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(1) + "G";
  if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
  if (a >= 100 || Number.isInteger(v)) return String(Math.round(v));
  return v.toFixed(a >= 1 ? 1 : 2);
}

function clock(ms) {
  const d = new Date(ms);
  return d.toTimeString().slice(0, 8);
}

// series: [{name, values: [number|null]}]; times: [epoch ms], same length as values.
export function lineChart(series, times, { title = "", unit = "", width = 640, height = 220 } = {}) {
  const svg = el("svg", { class: "chart line-chart", viewBox: `0 0 ${width} ${height}`,
                          role: "img", "data-series": series.length });
  svg.appendChild(el("title", {}, title));
  const left = 48, right = 12, top = 24, bottom = 40;
  const w = width - left - right, h = height - top - bottom;
  const values = series.flatMap((s) => s.values.filter((v) => v !== null && v !== undefined));
  const max = niceMax(values.length ? Math.max(...values) : 0);
  const t0 = times.length ? times[0] : 0, t1 = times.length ? times[times.length - 1] : 1;
  const x = (t) => left + (t1 > t0 ? ((t - t0) / (t1 - t0)) * w : w);
  const y = (v) => top + h - (v / max) * h;
  if (title) svg.appendChild(el("text", { x: left, y: 14, class: "chart-title" }, title + (unit ? ` (${unit})` : "")));
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4, yy = y(v);
    svg.appendChild(el("line", { x1: left, x2: left + w, y1: yy, y2: yy, class: "grid" }));
    svg.appendChild(el("text", { x: left - 6, y: yy + 4, class: "axis", "text-anchor": "end" }, formatNumber(v)));
  }
  if (times.length > 1) {
    for (const [t, anchor] of [[t0, "start"], [(t0 + t1) / 2, "middle"], [t1, "end"]]) {
      svg.appendChild(el("text", { x: x(t), y: top + h + 16, class: "axis", "text-anchor": anchor }, clock(t)));
    }
  }
  series.forEach((s, i) => {
    let d = "", pen = false;
    s.values.forEach((v, j) => {
      if (v === null || v === undefined || j >= times.length) { pen = false; return; }
      d += `${pen ? "L" : "M"}${x(times[j]).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    });
    const color = s.color || COLORS[i % COLORS.length];
    const path = el("path", { d, class: "series", stroke: color, fill: "none", "data-name": s.name });
    path.appendChild(el("title", {}, s.name));
    svg.appendChild(path);
  });
  // Legend under the axis.
  let lx = left;
  series.slice(0, 8).forEach((s, i) => {
    const color = s.color || COLORS[i % COLORS.length];
    svg.appendChild(el("rect", { x: lx, y: height - 12, width: 10, height: 10, fill: color }));
    const label = el("text", { x: lx + 14, y: height - 3, class: "legend" }, s.name);
    svg.appendChild(label);
    lx += 24 + Math.min(s.name.length, 28) * 6.5;
  });
  if (!values.length) {
    svg.appendChild(el("text", { x: left + w / 2, y: top + h / 2, class: "empty", "text-anchor": "middle" },
                       "no data yet"));
  }
  return svg;
}

// bars: [{label, value}]
export function barChart(bars, { title = "", width = 640, height = 220 } = {}) {
  const svg = el("svg", { class: "chart bar-chart", viewBox: `0 0 ${width} ${height}`, role: "img",
                          "data-series": bars.length });
  svg.appendChild(el("title", {}, title));
  const left = 48, right = 12, top = 24, bottom = 36;
  const w = width - left - right, h = height - top - bottom;
  const max = niceMax(Math.max(0, ...bars.map((b) => b.value)));
  if (title) svg.appendChild(el("text", { x: left, y: 14, class: "chart-title" }, title));
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4, yy = top + h - (v / max) * h;
    svg.appendChild(el("line", { x1: left, x2: left + w, y1: yy, y2: yy, class: "grid" }));
    svg.appendChild(el("text", { x: left - 6, y: yy + 4, class: "axis", "text-anchor": "end" }, formatNumber(v)));
  }
  const step = bars.length ? w / bars.length : w;
  const every = Math.max(1, Math.ceil(bars.length / 12));
  bars.forEach((b, i) => {
    const bh = (b.value / max) * h;
    const x0 = left + i * step + step * 0.1, bw = Math.max(1, step * 0.8);
    const y0 = top + h - bh;
    // A bar is a closed path, so a test (or a reader) finds its shape like a line's.
    const path = el("path", { d: `M${x0.toFixed(1)},${(top + h).toFixed(1)}V${y0.toFixed(1)}H${(x0 + bw).toFixed(1)}V${(top + h).toFixed(1)}Z`,
                              class: "series bar", fill: COLORS[0], "data-name": b.label });
    path.appendChild(el("title", {}, `${b.label}: ${b.value}`));
    svg.appendChild(path);
    if (i % every === 0) {
      svg.appendChild(el("text", { x: x0 + bw / 2, y: top + h + 14, class: "axis", "text-anchor": "middle" }, b.label));
    }
  });
  return svg;
}

// A small line without axes, for a table cell.
export function sparkline(values, { width = 120, height = 24 } = {}) {
  const svg = el("svg", { class: "chart sparkline", viewBox: `0 0 ${width} ${height}`, "data-series": 1 });
  const vs = values.map((v) => (v === null || v === undefined ? null : v));
  const present = vs.filter((v) => v !== null);
  const max = niceMax(present.length ? Math.max(...present) : 0);
  let d = "", pen = false;
  vs.forEach((v, i) => {
    if (v === null) { pen = false; return; }
    const x = vs.length > 1 ? (i / (vs.length - 1)) * width : width;
    d += `${pen ? "L" : "M"}${x.toFixed(1)},${(height - 2 - (v / max) * (height - 4)).toFixed(1)}`;
    pen = true;
  });
  svg.appendChild(el("path", { d, class: "series", stroke: COLORS[0], fill: "none" }));
  return svg;
}

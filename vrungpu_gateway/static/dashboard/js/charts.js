// D3 charts: arc gauges, the utilisation history and the task-status donut.
// D3 is the vendored UMD build (vendor/d3.min.js), loaded before the modules as window.d3.

const d3 = window.d3;

export const STATUS_COLORS = {
  pending: "#7d8590",
  queued: "#d29922",
  running: "#4c8dff",
  completed: "#3fb950",
  failed: "#f85149",
  cancelled: "#a371f7",
};
export const SERIES_COLORS = ["#4c8dff", "#3fb9a8", "#f0883e", "#db61a2", "#a371f7", "#e3b341",
                              "#56d364", "#79c0ff"];

const GAUGE_START = -0.75 * Math.PI;
const GAUGE_END = 0.75 * Math.PI;

export function levelColor(pct) {
  if (pct >= 90) return "#f85149";
  if (pct >= 70) return "#e3b341";
  return "#3fb9a8";
}

/** A 270° arc gauge in `el`; call again with a new value to animate to it. */
export function gauge(el, { value, label, detail, color }) {
  const size = 132;
  const radius = size / 2 - 8;
  const arc = d3.arc().innerRadius(radius - 11).outerRadius(radius).cornerRadius(6)
    .startAngle(GAUGE_START);
  let svg = d3.select(el).select("svg");
  if (svg.empty()) {
    svg = d3.select(el).append("svg").attr("viewBox", `0 0 ${size} ${size - 10}`)
      .attr("class", "gauge-svg");
    const g = svg.append("g").attr("transform", `translate(${size / 2},${size / 2})`);
    g.append("path").attr("class", "gauge-track").attr("d", arc.endAngle(GAUGE_END)());
    g.append("path").attr("class", "gauge-value").datum({ value: 0 })
      .attr("d", arc.endAngle(GAUGE_START)());
    g.append("text").attr("class", "gauge-number").attr("text-anchor", "middle").attr("dy", "0.1em");
    g.append("text").attr("class", "gauge-detail").attr("text-anchor", "middle").attr("dy", "1.7em");
    g.append("text").attr("class", "gauge-label").attr("text-anchor", "middle")
      .attr("y", radius * 0.72).attr("dy", "0.35em");
  }
  const pct = value === null || value === undefined ? null : Math.max(0, Math.min(100, value));
  const angle = (p) => GAUGE_START + ((GAUGE_END - GAUGE_START) * (p || 0)) / 100;
  const path = svg.select(".gauge-value");
  const previous = path.datum().value;
  path.datum({ value: pct ?? 0 })
    .transition().duration(700).ease(d3.easeCubicOut)
    .attr("fill", color || levelColor(pct ?? 0))
    .attrTween("d", () => {
      const interpolate = d3.interpolate(previous, pct ?? 0);
      return (t) => arc.endAngle(angle(interpolate(t)))();
    });
  svg.select(".gauge-number").text(pct === null ? "n/a" : `${Math.round(pct)}%`);
  svg.select(".gauge-detail").text(detail || "");
  svg.select(".gauge-label").text(label || "");
}

/** Utilisation of every GPU over the last `windowS` seconds. */
export function historyChart(el, { history, windowS, names }) {
  const width = Math.max(320, el.clientWidth || 600);
  const height = 220;
  const margin = { top: 12, right: 30, bottom: 26, left: 40 };
  let svg = d3.select(el).select("svg");
  if (svg.empty()) {
    svg = d3.select(el).append("svg").attr("class", "history-svg");
    const defs = svg.append("defs");
    SERIES_COLORS.forEach((color, i) => {
      const grad = defs.append("linearGradient").attr("id", `hist-fill-${i}`)
        .attr("x1", 0).attr("x2", 0).attr("y1", 0).attr("y2", 1);
      grad.append("stop").attr("offset", "0%").attr("stop-color", color).attr("stop-opacity", 0.28);
      grad.append("stop").attr("offset", "100%").attr("stop-color", color).attr("stop-opacity", 0);
    });
    svg.append("g").attr("class", "grid");
    svg.append("g").attr("class", "axis axis-x");
    svg.append("g").attr("class", "axis axis-y");
    svg.append("g").attr("class", "areas");
    svg.append("g").attr("class", "lines");
    svg.append("text").attr("class", "chart-empty").attr("text-anchor", "middle");
  }
  svg.attr("viewBox", `0 0 ${width} ${height}`);
  const now = Date.now();
  const x = d3.scaleTime().domain([now - windowS * 1000, now])
    .range([margin.left, width - margin.right]);
  const y = d3.scaleLinear().domain([0, 100]).range([height - margin.bottom, margin.top]);
  svg.select(".axis-x").attr("transform", `translate(0,${height - margin.bottom})`)
    .call(d3.axisBottom(x).ticks(Math.min(6, width / 110)).tickFormat(d3.timeFormat("%H:%M:%S"))
      .tickSizeOuter(0));
  svg.select(".axis-y").attr("transform", `translate(${margin.left},0)`)
    .call(d3.axisLeft(y).ticks(4).tickFormat((d) => `${d}%`).tickSizeOuter(0));
  svg.select(".grid").attr("transform", `translate(${margin.left},0)`)
    .call(d3.axisLeft(y).ticks(4).tickSize(-(width - margin.left - margin.right)).tickFormat(""));
  const series = [...history.entries()].sort((a, b) => a[0] - b[0]);
  const line = d3.line().x((d) => x(d.t)).y((d) => y(d.util)).curve(d3.curveMonotoneX);
  const area = d3.area().x((d) => x(d.t)).y0(y(0)).y1((d) => y(d.util)).curve(d3.curveMonotoneX);
  const color = (index) => SERIES_COLORS[index % SERIES_COLORS.length];
  svg.select(".areas").selectAll("path").data(series, (d) => d[0]).join("path")
    .attr("fill", (d) => `url(#hist-fill-${d[0] % SERIES_COLORS.length})`)
    .attr("d", (d) => area(d[1]));
  svg.select(".lines").selectAll("path").data(series, (d) => d[0]).join("path")
    .attr("fill", "none").attr("stroke", (d) => color(d[0])).attr("stroke-width", 2)
    .attr("data-series", (d) => d[0])
    .attr("d", (d) => line(d[1]));
  const points = series.reduce((n, d) => n + d[1].length, 0);
  svg.select(".chart-empty").attr("x", width / 2).attr("y", height / 2)
    .text(series.length === 0 ? "No GPUs on this host" : points < 2 ? "Collecting samples…" : "");
  return series.map(([index]) => ({ index, color: color(index), name: names.get(index) || `GPU ${index}` }));
}

/** The task-status donut: counts by status with the total in the middle. */
export function statusDonut(el, byStatus, order) {
  const size = 180;
  const radius = size / 2;
  const data = order.map((status) => ({ status, count: byStatus[status] || 0 }));
  const total = d3.sum(data, (d) => d.count);
  let svg = d3.select(el).select("svg");
  if (svg.empty()) {
    svg = d3.select(el).append("svg").attr("viewBox", `0 0 ${size} ${size}`).attr("class", "donut-svg");
    const g = svg.append("g").attr("transform", `translate(${radius},${radius})`);
    g.append("circle").attr("class", "donut-track").attr("r", radius - 14);
    g.append("g").attr("class", "slices");
    g.append("text").attr("class", "donut-total").attr("text-anchor", "middle").attr("dy", "0.15em");
    g.append("text").attr("class", "donut-caption").attr("text-anchor", "middle").attr("dy", "1.7em")
      .text("tasks");
  }
  const arc = d3.arc().innerRadius(radius - 24).outerRadius(radius - 4).cornerRadius(3).padAngle(0.015);
  const pie = d3.pie().sort(null).value((d) => d.count);
  const slices = total ? pie(data.filter((d) => d.count > 0)) : [];
  svg.select(".slices").selectAll("path").data(slices, (d) => d.data.status).join(
    (enter) => enter.append("path").each(function (d) { this._current = { ...d, endAngle: d.startAngle }; }),
  )
    .attr("fill", (d) => STATUS_COLORS[d.data.status])
    .attr("data-status", (d) => d.data.status)
    .transition().duration(600)
    .attrTween("d", function (d) {
      const interpolate = d3.interpolate(this._current, d);
      this._current = interpolate(1);
      return (t) => arc(interpolate(t));
    });
  svg.select(".donut-total").text(total);
  return data;
}

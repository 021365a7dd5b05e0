// The Overview: KPIs, GPU cards with gauges, utilisation history, status donut, CPU slots,
// recent tasks.

import { api } from "./api.js";
import { STATUS_COLORS, gauge, historyChart, levelColor, statusDonut } from "./charts.js";
import { holderParts } from "./kernels.js";
import { HISTORY_WINDOW_S } from "./live.js";
import { TaskTable, cancelTask } from "./tasks.js";
import {
  STATUSES, clear, debounce, every, fill, fmtMb, h, isLive, reportError, shortId,
} from "./util.js";

export function mountOverview(root, ctx) {
  const kpis = {
    gpus: kpi("GPUs in use", "kpi-gpus"),
    cpu: kpi("CPU slots in use", "kpi-cpu"),
    running: kpi("Running", "kpi-running", STATUS_COLORS.running),
    queued: kpi("Queued", "kpi-queued", STATUS_COLORS.queued),
    day: kpi("Tasks, last 24 h", "kpi-24h"),
  };
  const gpuGrid = h("div.gpu-grid#gpu-cards");
  const historyEl = h("div.chart#util-history");
  const legend = h("div.legend#util-legend");
  const donutEl = h("div.donut#status-donut");
  const donutLegend = h("div.donut-legend");
  const cpuSlots = h("div.cpu-slots#cpu-slots");
  const recent = new TaskTable({ compact: true, onOpen: (t) => ctx.navigate(`#/task/${t.task_id}`),
                                 onCancel: async (t) => (await cancelTask(t)) && refreshRecent() });

  root.append(
    h("div.kpi-row", Object.values(kpis).map((k) => k.el)),
    h("section.panel",
      h("div.panel-head", h("h2", "GPUs"), h("span.muted.small#gpu-kind")),
      gpuGrid),
    h("div.grid-2-1",
      h("section.panel",
        h("div.panel-head", h("h2", "GPU utilisation"), h("span.muted.small", "last 5 minutes")),
        historyEl, legend),
      h("section.panel",
        h("div.panel-head", h("h2", "Task status"), h("span.muted.small", "all time")),
        h("div.donut-wrap", donutEl, donutLegend))),
    h("div.grid-1-2",
      h("section.panel",
        h("div.panel-head", h("h2", "CPU slots")),
        cpuSlots),
      h("section.panel",
        h("div.panel-head", h("h2", "Recent tasks"),
          h("a.link.small", { href: "#/tasks" }, "All tasks →")),
        recent.el)));

  const cards = new Map();

  function renderGpus({ gpus, pool }) {
    document.getElementById("gpu-kind").textContent = gpus.some((g) => g.simulated)
      ? "simulated devices" : gpus.length ? "NVML" : "";
    if (!gpus.length && !gpuGrid.querySelector(".empty")) {
      clear(gpuGrid).append(h("div.empty", "No GPUs on this host: tasks run in CPU slots."));
    }
    for (const gpu of gpus) {
      let card = cards.get(gpu.index);
      if (!card) {
        gpuGrid.querySelector(".empty")?.remove();
        card = gpuCard(gpu);
        cards.set(gpu.index, card);
        gpuGrid.append(card.el);
      }
      updateCard(card, gpu, ctx);
    }
    const busyGpus = pool ? pool.total_gpus - pool.available_gpus.length : gpus.filter(holderOf).length;
    kpis.gpus.set(`${busyGpus} / ${pool ? pool.total_gpus : gpus.length}`);
    renderCpu(pool);
    const names = new Map(gpus.map((g) => [g.index, `GPU ${g.index}`]));
    const series = historyChart(historyEl, { history: ctx.live.history, windowS: HISTORY_WINDOW_S, names });
    clear(legend).append(...series.map((s) => h("span.legend-item",
      h("span.swatch", { style: { background: s.color } }), s.name)));
  }

  function renderCpu(pool) {
    if (!pool) return;
    const busy = pool.cpu_busy || [];
    kpis.cpu.set(`${busy.length} / ${pool.cpu_slots}`);
    clear(cpuSlots);
    if (!pool.cpu_slots) cpuSlots.append(h("div.empty", "No CPU slots configured."));
    for (let i = 0; i < pool.cpu_slots; i += 1) {
      const taskId = busy[i];
      cpuSlots.append(h("div.cpu-slot", { class: taskId ? "busy" : "", dataset: { slot: i } },
        h("div.cpu-slot-label", `Slot ${i}`),
        taskId ? h("a.link.mono", { href: `#/task/${taskId}` }, taskLabel(ctx, taskId)) : h("span.muted", "free")));
    }
  }

  async function refreshStats() {
    const stats = await api("/stats");
    const byStatus = (stats.tasks && stats.tasks.by_status) || {};
    kpis.running.set(byStatus.running || 0);
    kpis.queued.set((byStatus.queued || 0) + (byStatus.pending || 0));
    kpis.day.set(stats.tasks ? stats.tasks.last_24h : 0);
    const data = statusDonut(donutEl, byStatus, STATUSES);
    clear(donutLegend).append(...data.map((d) => h("div.donut-legend-item", { dataset: { status: d.status } },
      h("span.swatch", { style: { background: STATUS_COLORS[d.status] } }),
      h("span.label", d.status), h("span.count", d.count))));
  }
  const refreshStatsSoon = debounce(() => refreshStats().catch(reportError), 400);

  async function refreshRecent() {
    const tasks = await api("/tasks?limit=6");
    tasks.forEach((t) => ctx.tasks.set(t.task_id, t));
    recent.render(tasks);
  }
  const refreshRecentSoon = debounce(() => refreshRecent().catch(reportError), 300);

  if (ctx.live.gpus.length || ctx.live.pool) renderGpus({ gpus: ctx.live.gpus, pool: ctx.live.pool });
  const statusOf = new Map();
  const stops = [
    ctx.live.on("gpus", renderGpus),
    ctx.live.on("task", (task) => {
      if (!recent.update(task)) refreshRecentSoon();
      if (statusOf.get(task.task_id) !== task.status) refreshStatsSoon();
      statusOf.set(task.task_id, task.status);
    }),
    ctx.live.on("deleted", () => {
      refreshRecentSoon();
      refreshStatsSoon();
    }),
    every(5000, refreshStats),
    every(2000, () => (ctx.live.polling ? refreshRecent() : null)),
    every(20000, () => (ctx.live.polling ? null : refreshRecent())),
    every(1000, () => recent.tick()),
  ];
  const onResize = debounce(() => renderGpus({ gpus: ctx.live.gpus, pool: ctx.live.pool }), 150);
  window.addEventListener("resize", onResize);
  return () => {
    stops.forEach((stop) => stop());
    window.removeEventListener("resize", onResize);
  };
}

function kpi(label, id, color) {
  const value = h("div.kpi-value", "—");
  const el = h(`div.kpi#${id}`, { style: color ? { "--accent": color } : null },
    h("div.kpi-label", label), value);
  return { el, set: (text) => { value.textContent = String(text); } };
}

function taskLabel(ctx, taskId) {
  const task = ctx.tasks.get(taskId);
  return task && task.name ? `${task.name} · ${shortId(taskId)}` : shortId(taskId);
}

function gpuCard(gpu) {
  const util = h("div.gauge", { dataset: { gauge: "util" } });
  const mem = h("div.gauge", { dataset: { gauge: "memory" } });
  const temp = h("span.temp-value");
  const tempBar = h("div.temp-bar", h("div.temp-fill"));
  const holder = h("div.gpu-holder");
  const name = h("div.gpu-name");
  const badge = h("span.badge.badge-sim", "simulated");
  const state = h("span.gpu-state");
  const el = h("article.card.gpu-card", { dataset: { gpuIndex: gpu.index } },
    h("header.gpu-head",
      h("div", h("div.gpu-title", `GPU ${gpu.index}`, state), name),
      badge),
    h("div.gauges", util, mem),
    h("div.gpu-foot",
      h("div.temp", h("span.muted.small", "Temperature"), h("div.temp-row", tempBar, temp)),
      holder));
  return { el, util, mem, temp, tempFill: tempBar.firstChild, holder, name, badge, state };
}

function updateCard(card, gpu, ctx) {
  card.name.textContent = gpu.name || "";
  card.name.title = gpu.uuid || "";
  card.badge.hidden = !gpu.simulated;
  const holder = holderOf(gpu);
  card.el.dataset.busy = holder ? "true" : "false";
  card.el.dataset.holderKind = holder ? holder.kind : "";
  card.state.textContent = holder ? "busy" : "idle";
  card.state.className = `gpu-state ${holder ? "busy" : "idle"}`;
  const memPct = gpu.memory_total_mb ? (100 * gpu.memory_used_mb) / gpu.memory_total_mb : null;
  gauge(card.util, { value: gpu.utilization_percent, label: "Utilisation" });
  gauge(card.mem, { value: memPct, label: "Memory",
                    detail: `${fmtMb(gpu.memory_used_mb)} / ${fmtMb(gpu.memory_total_mb)}` });
  const t = gpu.temperature_c;
  card.temp.textContent = t === null || t === undefined ? "n/a" : `${t} °C`;
  const tPct = t ? Math.min(100, (t / 95) * 100) : 0;
  card.tempFill.style.width = `${tPct}%`;
  card.tempFill.style.background = levelColor(tPct);
  renderHolder(card.holder, holder, ctx);
}

/** Who holds the GPU: the gateway's `holder`, or (older gateways) a task by its id. */
function holderOf(gpu) {
  if (gpu.holder) return gpu.holder;
  return gpu.task_id ? { kind: "task", id: gpu.task_id } : null;
}

function renderHolder(el, holder, ctx) {
  if (!holder) {
    fill(el, h("span.muted.small", "Holding"), h("span.gpu-free", "no task"));
  } else if (holder.kind === "task") {
    const task = ctx.tasks.get(holder.id);
    fill(el, h("span.muted.small", "Running"),
      h("a.link.mono.gpu-task", { href: `#/task/${holder.id}`, dataset: { taskId: holder.id } },
        taskLabel(ctx, holder.id)),
      task && isLive(task) ? h("span.small.muted", ` ${Math.round(task.progress || 0)}%`) : null);
  } else {
    const [name, detail] = holderParts(holder);
    const href = holder.kind === "kernel" ? "#/kernels" : "#/models";
    fill(el, h("span.muted.small", "Held by"),
      h("a.link.mono.gpu-task", { href, title: holder.id, dataset: { holderId: holder.id } }, name),
      detail ? h("span.small.gpu-holder-detail", detail) : null);
  }
}

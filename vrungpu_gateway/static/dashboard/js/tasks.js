// The task table (also used on the overview) and the Tasks view: filters, paging, live rows.

import { api, apiList } from "./api.js";
import {
  STATUSES, clear, debounce, deviceLabel, every, fmtAgo, fmtDuration, h, isLive,
  progressBar, reportError, resultSummary, shortId, statusBadge, taskDuration, toast,
  updateProgressBar, confirmDialog,
} from "./util.js";

/** A table of tasks whose rows are kept (keyed by task id) so progress bars animate. */
export class TaskTable {
  constructor({ compact = false, onOpen, onCancel } = {}) {
    this.compact = compact;
    this.onOpen = onOpen;
    this.onCancel = onCancel;
    this.rows = new Map();
    this.tbody = h("tbody");
    this.empty = h("div.empty", "No tasks yet. Submit one from the Submit tab.");
    const head = ["Task", "Status", "Device", "Progress", compact ? null : "Created",
                  "Duration", compact ? null : "Result", ""].filter((x) => x !== null);
    this.el = h("div.table-wrap",
      h("table.task-table", { class: compact ? "compact" : "" },
        h("thead", h("tr", head.map((label) => h("th", label)))),
        this.tbody),
      this.empty);
  }

  /** Show exactly `tasks`, in order, reusing existing rows. */
  render(tasks, { highlight } = {}) {
    const keep = new Set(tasks.map((t) => t.task_id));
    for (const [id, row] of this.rows) {
      if (!keep.has(id)) {
        row.tr.remove();
        this.rows.delete(id);
      }
    }
    tasks.forEach((task, i) => {
      let row = this.rows.get(task.task_id);
      if (!row) {
        row = this.createRow(task);
        this.rows.set(task.task_id, row);
        if (highlight === task.task_id) row.tr.classList.add("flash");
      }
      this.updateRow(row, task);
      if (this.tbody.children[i] !== row.tr) this.tbody.insertBefore(row.tr, this.tbody.children[i] || null);
    });
    this.empty.hidden = tasks.length > 0;
  }

  /** Apply a live update to the row of this task, if shown; returns whether it was. */
  update(task) {
    const row = this.rows.get(task.task_id);
    if (!row) return false;
    this.updateRow(row, { ...row.task, ...task });
    return true;
  }

  /** Re-render durations of running tasks (called every second). */
  tick() {
    for (const row of this.rows.values()) {
      if (row.task.status === "running") row.duration.textContent = fmtDuration(taskDuration(row.task));
    }
  }

  createRow(task) {
    const cells = {
      title: h("div.task-title"),
      sub: h("div.task-sub.mono"),
      status: h("td.cell-status"),
      device: h("td.cell-device"),
      bar: progressBar(task),
      pct: h("span.progress-pct"),
      message: h("span.progress-message"),
      created: h("td.cell-created.muted"),
      duration: h("td.cell-duration.num"),
      result: h("td.cell-result"),
      actions: h("td.cell-actions"),
    };
    const tr = h("tr.task-row", { dataset: { taskId: task.task_id }, tabindex: 0,
                                  onclick: (e) => !e.target.closest("button") && this.onOpen?.(row.task),
                                  onkeydown: (e) => e.key === "Enter" && this.onOpen?.(row.task) },
      h("td.cell-task", cells.title, cells.sub),
      cells.status,
      cells.device,
      h("td.cell-progress", cells.bar, h("div.progress-text", cells.pct, cells.message)),
      this.compact ? null : cells.created,
      cells.duration,
      this.compact ? null : cells.result,
      cells.actions);
    const row = { tr, task, ...cells };
    return row;
  }

  updateRow(row, task) {
    row.task = task;
    row.tr.dataset.status = task.status;
    row.title.textContent = task.name || (task.task_type === "inference" ? "inference" : "task");
    row.sub.textContent = shortId(task.task_id);
    row.sub.title = task.task_id;
    clear(row.status).append(statusBadge(task.status));
    row.device.textContent = deviceLabel(task);
    updateProgressBar(row.bar, task);
    row.pct.textContent = `${Math.round(task.progress || 0)}%`;
    row.message.textContent = task.progress_message || "";
    row.created.textContent = fmtAgo(task.created_at);
    row.created.title = task.created_at || "";
    row.duration.textContent = fmtDuration(taskDuration(task));
    const summary = resultSummary(task);
    row.result.textContent = summary;
    row.result.title = summary;
    row.result.className = `cell-result ${task.status === "failed" ? "text-error" : ""}`;
    const live = isLive(task);
    if (live !== row.live) {
      row.live = live;
      clear(row.actions);
      if (live && this.onCancel) {
        row.actions.append(h("button.btn.btn-small.btn-ghost", {
          dataset: { action: "cancel", taskId: task.task_id }, title: "Cancel this task",
          onclick: () => this.onCancel(row.task),
        }, "Cancel"));
      }
    }
  }
}

export async function cancelTask(task) {
  const ok = await confirmDialog({
    title: "Cancel this task?",
    body: `${task.name || shortId(task.task_id)} will be stopped (SIGTERM, then SIGKILL).`,
    ok: "Cancel task",
  });
  if (!ok) return false;
  try {
    await api(`/task/${encodeURIComponent(task.task_id)}/cancel`, { method: "POST" });
    toast(`Task ${shortId(task.task_id)} cancelled`, "success");
    return true;
  } catch (err) {
    reportError(err);
    return false;
  }
}

// -- the Tasks view ---------------------------------------------------------------------------

const filters = { status: "", device: "", limit: 25, offset: 0 };

export function mountTasks(root, ctx) {
  const table = new TaskTable({ onOpen: (t) => ctx.navigate(`#/task/${t.task_id}`),
                                onCancel: async (t) => (await cancelTask(t)) && refresh() });
  const pageInfo = h("span.page-info#page-info");
  const prev = h("button.btn.btn-ghost.btn-small#page-prev", { onclick: () => page(-1) }, "‹ Prev");
  const next = h("button.btn.btn-ghost.btn-small#page-next", { onclick: () => page(1) }, "Next ›");
  const chips = h("div.segmented#filter-status", [{ value: "", label: "All" },
    ...STATUSES.map((s) => ({ value: s, label: s }))].map(({ value, label }) =>
    h("button.seg", { dataset: { filterStatus: value }, class: value === filters.status ? "active" : "",
                      onclick: () => setFilter({ status: value }) }, label)));
  const device = h("select#filter-device", { onchange: (e) => setFilter({ device: e.target.value }) },
    [["", "Any device"], ["gpu", "GPU"], ["cpu", "CPU"]].map(([v, l]) =>
      h("option", { value: v, selected: v === filters.device }, l)));
  const size = h("select#page-size", { onchange: (e) => setFilter({ limit: Number(e.target.value) }) },
    [10, 25, 50, 100].map((n) => h("option", { value: n, selected: n === filters.limit }, `${n} / page`)));
  root.append(h("section.panel",
    h("div.panel-head",
      h("h2", "Tasks"),
      h("div.toolbar", chips, device, size,
        h("button.btn.btn-ghost.btn-small#tasks-refresh", { onclick: () => refresh() }, "Refresh"))),
    table.el,
    h("div.pager", pageInfo, h("div.pager-buttons", prev, next))));

  let total = 0;
  let highlight = ctx.consumeHighlight?.();

  let asked = 0; // answers to older requests (filters changed since) are dropped
  async function refresh() {
    const query = new URLSearchParams({ limit: filters.limit, offset: filters.offset });
    if (filters.status) query.set("status", filters.status);
    if (filters.device) query.set("device", filters.device);
    const ticket = ++asked;
    const data = await apiList(`/tasks?${query}`);
    if (ticket !== asked) return;
    total = data.total;
    if (filters.offset > 0 && filters.offset >= total) {
      filters.offset = Math.max(0, Math.floor((total - 1) / filters.limit) * filters.limit);
      return refresh();
    }
    data.items.forEach((t) => ctx.tasks.set(t.task_id, t));
    table.render(data.items, { highlight });
    highlight = null;
    const first = total ? filters.offset + 1 : 0;
    const last = Math.min(filters.offset + data.items.length, total);
    pageInfo.textContent = `${first}–${last} of ${total}`;
    table.el.dataset.query = query.toString(); // what the rows show (tests wait on it)
    prev.disabled = filters.offset === 0;
    next.disabled = filters.offset + filters.limit >= total;
  }
  const refreshSoon = debounce(() => refresh().catch(reportError), 250);

  function setFilter(change) {
    Object.assign(filters, change, { offset: 0 });
    chips.querySelectorAll(".seg").forEach((b) =>
      b.classList.toggle("active", b.dataset.filterStatus === filters.status));
    refresh().catch(reportError);
  }

  function page(direction) {
    filters.offset = Math.max(0, filters.offset + direction * filters.limit);
    refresh().catch(reportError);
  }

  const matches = (task) => (!filters.status || task.status === filters.status)
    && (!filters.device || task.device === filters.device);
  const stops = [
    ctx.live.on("task", (task) => {
      const shown = table.update(task);
      // A new task or one leaving the filter changes the page: fetch it again.
      if ((!shown && matches(task) && filters.offset === 0) || (shown && !matches(task))) refreshSoon();
    }),
    ctx.live.on("deleted", () => refreshSoon()),
    every(2000, () => (ctx.live.polling ? refresh() : null)),
    every(15000, () => (ctx.live.polling ? null : refresh())),
    every(1000, () => table.tick()),
  ];
  return () => stops.forEach((stop) => stop());
}

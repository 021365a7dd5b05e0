// The Kernels view: remote kernels and sessions (GET /api/kernels) with their GPUs, state and
// idle time, and Stop (DELETE /api/kernels/{id}). Kernels are not on the WebSocket, so the view
// polls while it is shown and the tab is visible (`every` stands by while the tab is hidden).

import { api } from "./api.js";
import {
  clear, confirmDialog, every, fill, fmtAgo, fmtDuration, fmtTime, h, reportError, shortId, toast,
} from "./util.js";

const POLL_MS = 2500;

export function mountKernels(root, ctx) {
  if (!ctx.features.kernels) {
    root.append(h("section.panel.empty-state#kernels-unavailable",
      h("h2", "Kernels"),
      h("p.muted", "This gateway runs no remote kernels (it does not serve /api/kernels). " +
        "Update the gateway to start sessions and list them here.")));
    return () => {};
  }
  const note = h("span.muted.small#kernels-note");
  const list = h("div.table-wrap#kernels-list", h("div.empty", "Loading…"));
  root.append(h("section.panel",
    h("div.panel-head", h("h2", "Kernels and sessions"),
      h("div.toolbar", note,
        h("button.btn.btn-ghost.btn-small#kernels-refresh",
          { onclick: () => refresh().catch(reportError) }, "Refresh"))),
    list));

  async function refresh() {
    const kernels = await api("/api/kernels");
    render(Array.isArray(kernels) ? kernels : []);
  }

  let table = null;
  function render(kernels) {
    const busy = kernels.filter((k) => k.execution_state === "busy").length;
    note.textContent = kernels.length ? `${kernels.length} running · ${busy} busy` : "";
    // Owners come with users (a later gateway); until then there is no such column.
    const owners = kernels.some((k) => "owner" in k);
    if (!table || table.owners !== owners) {
      table = new KernelTable({ owners, onStop: stop });
      clear(list).append(table.el);
    }
    table.render(kernels);
  }

  async function stop(kernel) {
    const label = kernel.session ? `session ${kernel.session}` : `kernel ${shortId(kernel.id)}`;
    const ok = await confirmDialog({
      title: `Stop ${label}?`,
      body: "The kernel shuts down: its variables are lost and its GPUs go back to the pool.",
      ok: "Stop kernel",
    });
    if (!ok) return;
    try {
      await api(`/api/kernels/${encodeURIComponent(kernel.id)}`, { method: "DELETE" });
      toast(`Stopped ${label}`, "success");
    } catch (err) {
      reportError(err);
    }
    await refresh().catch(reportError);
  }

  const stopPolling = every(POLL_MS, refresh);
  return () => stopPolling();
}

/** Kernel rows kept by id and updated in place, so a poll does not move the Stop button. */
class KernelTable {
  constructor({ owners, onStop }) {
    this.owners = owners;
    this.onStop = onStop;
    this.rows = new Map();
    this.tbody = h("tbody");
    this.empty = h("div.empty", "No kernels. %%vrungpu --session NAME or jupyter lab " +
      "--gateway-url starts one.");
    const head = ["Session", "Kernel", "Kernelspec", "GPUs", "State", "Idle", "Started",
                  owners ? "Owner" : null, ""].filter((x) => x !== null);
    this.el = h("div",
      h("table.kernel-table", h("thead", h("tr", head.map((label) => h("th", label)))), this.tbody),
      this.empty);
  }

  render(kernels) {
    const keep = new Set(kernels.map((k) => k.id));
    for (const [id, row] of this.rows) {
      if (!keep.has(id)) {
        row.tr.remove();
        this.rows.delete(id);
      }
    }
    kernels.forEach((kernel, i) => {
      let row = this.rows.get(kernel.id);
      if (!row) {
        row = this.createRow(kernel.id);
        this.rows.set(kernel.id, row);
      }
      row.kernel = kernel;
      this.updateRow(row, kernel);
      if (this.tbody.children[i] !== row.tr) this.tbody.insertBefore(row.tr, this.tbody.children[i] || null);
    });
    this.empty.hidden = kernels.length > 0;
  }

  createRow(id) {
    const cell = (cls) => h(`td${cls}`);
    const row = { session: cell(".kernel-session"), id: cell(".mono"), spec: cell(".muted"),
                  gpus: cell(".kernel-gpus"), state: cell(".kernel-state-cell"),
                  idle: cell(".kernel-idle.num"), started: cell(".muted"),
                  owner: this.owners ? cell(".kernel-owner") : null };
    const stop = h("button.btn.btn-danger-ghost.btn-small", { dataset: { action: "stop-kernel" },
                                                               onclick: () => this.onStop(row.kernel) },
      "Stop");
    row.tr = h("tr.kernel-row", { dataset: { kernelId: id } },
      row.session, row.id, row.spec, row.gpus, row.state, row.idle, row.started, row.owner,
      h("td.cell-actions", stop));
    return row;
  }

  updateRow(row, kernel) {
    const state = kernel.execution_state || "unknown";
    row.tr.dataset.state = state;
    fill(row.session, kernel.session ? h("span.task-title", kernel.session) : h("span.muted", "—"));
    row.id.textContent = shortId(kernel.id);
    row.id.title = kernel.id;
    row.spec.textContent = kernel.name || "—";
    fill(row.gpus, kernelPlace(kernel));
    fill(row.state, h("span.badge.kernel-state", { class: `kernel-state-${state}` }, state));
    fill(row.idle, state === "busy" ? h("span.muted", "running a cell") : fmtDuration(kernel.idle_s));
    row.idle.title = kernel.last_activity ? `last activity ${fmtTime(kernel.last_activity)}` : "";
    row.started.textContent = fmtAgo(kernel.created_at);
    row.started.title = fmtTime(kernel.created_at);
    if (row.owner) row.owner.textContent = kernel.owner || "—";
  }
}

/** Where a kernel runs: `GPU 0`, `GPU 0, 1`, `CPU`, or its place in the queue. */
function kernelPlace(kernel) {
  if (kernel.gpus && kernel.gpus.length) return `GPU ${kernel.gpus.join(", ")}`;
  if (kernel.queue_position) return h("span.muted", `queued #${kernel.queue_position}`);
  return kernel.device === "cpu" ? "CPU" : "—";
}

/** Who holds a GPU, from the `holder` of `GET /gpu` and `gpu_update`, as a name and a detail:
 * ["kernel 96be517c", "(session train)"], ["model worker", "model 5e6f7a8b"], ["task 1a2b3c4d", ""]. */
export function holderParts(holder) {
  if (holder.kind === "kernel") {
    return [`kernel ${shortId(holder.id)}`, holder.session ? `(session ${holder.session})` : ""];
  }
  if (holder.kind === "worker") return ["model worker", `model ${shortId(holder.model_id)}`];
  return [`task ${shortId(holder.id)}`, ""];
}

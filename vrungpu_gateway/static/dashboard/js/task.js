// One task: status, progress, details, result, workspace files and the live log.
//
// The log comes from a WebSocket subscription from byte offset 0 (the gateway replays the
// files, then sends new lines live, in batches that end at a byte offset). After a `gap` it
// subscribes again from the offsets it has. Without a WebSocket it is read with
// `GET /task/{id}/logs?stream=S&offset=N`, following each stream's byte offset.

import { api, tokenUrl } from "./api.js";
import { cancelTask } from "./tasks.js";
import {
  clear, confirmDialog, deviceLabel, every, fmtBytes, fmtDuration, fmtTime, h, isLive,
  progressBar, reportError, statusBadge, taskDuration, toast, updateProgressBar,
} from "./util.js";

const MAX_LINES = 5000;
const STREAMS = ["stdout", "stderr"];

/** The log panel: appends lines, keeps at most MAX_LINES, follows the bottom when asked. */
class LogView {
  constructor() {
    this.lines = 0;
    this.trimmed = 0;
    this.follow = true;
    this.body = h("div.log-body#task-log", { role: "log", "aria-live": "off" });
    this.note = h("div.log-note", { hidden: true });
    this.empty = h("div.log-empty", "No output yet.");
    this.body.append(this.empty);
    this.body.addEventListener("scroll", () => {
      const atBottom = this.body.scrollHeight - this.body.scrollTop - this.body.clientHeight < 24;
      this.follow = atBottom;
    });
  }

  reset() {
    clear(this.body).append(this.empty);
    this.empty.hidden = false;
    this.lines = 0;
    this.trimmed = 0;
    this.note.hidden = true;
  }

  append(stream, lines) {
    if (!lines.length) return;
    this.empty.hidden = true;
    const frag = document.createDocumentFragment();
    for (const raw of lines) {
      // tqdm rewrites its line with \r: show the last state.
      const text = raw.includes("\r") ? raw.split("\r").filter(Boolean).pop() || "" : raw;
      frag.append(h("div.log-line", { dataset: { stream } }, text));
    }
    this.body.append(frag);
    this.lines += lines.length;
    const excess = this.lines - MAX_LINES;
    for (let i = 0; i < excess; i += 1) this.body.querySelector(".log-line")?.remove();
    if (excess > 0) {
      this.lines -= excess;
      this.trimmed += excess;
      this.note.hidden = false;
      this.note.textContent = `${this.trimmed} earlier lines are not shown (the log keeps the last ${MAX_LINES}).`;
    }
    if (this.follow) this.body.scrollTop = this.body.scrollHeight;
  }
}

/** Reads both streams by byte offset; holds a partial last line until it is complete. */
class RestLogReader {
  constructor(taskId, view) {
    this.taskId = taskId;
    this.view = view;
    this.offsets = { stdout: 0, stderr: 0 };
    this.partial = { stdout: "", stderr: "" };
    this.queue = Promise.resolve();
  }

  /** Reads run one after another, so two never fetch the same offset. */
  read(options) {
    const run = this.queue.then(() => this.readOnce(options));
    this.queue = run.catch(() => {});
    return run;
  }

  async readOnce({ final = false } = {}) {
    for (const stream of STREAMS) {
      for (let guard = 0; guard < 20; guard += 1) {
        const data = await api(`/task/${encodeURIComponent(this.taskId)}/logs?stream=${stream}` +
                               `&offset=${this.offsets[stream]}`);
        this.offsets[stream] = data.next_offset;
        this.feed(stream, data.content || "");
        if (data.complete !== false) break;
      }
      if (final && this.partial[stream]) {
        this.view.append(stream, [this.partial[stream]]);
        this.partial[stream] = "";
      }
    }
  }

  feed(stream, text) {
    if (!text) return;
    const parts = (this.partial[stream] + text).split("\n");
    this.partial[stream] = parts.pop();
    this.view.append(stream, parts);
  }
}

export function mountTask(root, ctx, taskId) {
  const log = new LogView();
  const bar = progressBar({ progress: 0, status: "pending" });
  bar.id = "task-progress";
  const els = {
    title: h("h2.task-heading"),
    id: h("code.mono.task-id", taskId),
    status: h("span#task-status"),
    pct: h("span.progress-pct#task-progress-pct"),
    message: h("span.progress-message#task-progress-message"),
    details: h("dl.details#task-details"),
    result: h("div#task-result"),
    files: h("div#task-files"),
    actions: h("div.actions"),
    mode: h("span.muted.small#log-mode"),
  };
  const cancelBtn = h("button.btn.btn-warning#task-cancel", { dataset: { action: "cancel" },
                                                             onclick: () => onCancel() }, "Cancel");
  const deleteBtn = h("button.btn.btn-danger-ghost#task-delete", { dataset: { action: "delete" },
                                                                 onclick: () => onDelete() }, "Delete");
  els.actions.append(cancelBtn, deleteBtn);
  const followBox = h("input#log-follow", { type: "checkbox", checked: true,
                                            onchange: (e) => { log.follow = e.target.checked; } });
  const streamToggle = h("div.segmented.small#log-streams", ["all", "stdout", "stderr"].map((s) =>
    h("button.seg", { class: s === "all" ? "active" : "", dataset: { stream: s }, onclick: () => {
      log.body.dataset.show = s;
      streamToggle.querySelectorAll(".seg").forEach((b) => b.classList.toggle("active", b.dataset.stream === s));
    } }, s)));

  root.append(
    h("div.crumbs", h("a.link#back-to-tasks", { href: "#/tasks" }, "← Tasks")),
    h("section.panel.task-header",
      h("div.task-header-row",
        h("div", els.title, h("div.task-id-row", els.id, els.status)),
        els.actions),
      h("div.task-progress", bar, h("div.progress-text", els.pct, els.message))),
    h("div.grid-1-2",
      h("section.panel", h("div.panel-head", h("h2", "Details")), els.details, els.result),
      h("section.panel.log-panel",
        h("div.panel-head", h("h2", "Log"),
          h("div.toolbar", els.mode, streamToggle,
            h("label.check", followBox, "Follow"))),
        log.note, log.body)),
    h("section.panel", h("div.panel-head", h("h2", "Workspace files"),
      h("button.btn.btn-ghost.btn-small#files-refresh", { onclick: () => loadFiles() }, "Refresh")),
    els.files));

  let task = null;
  let reader = null; // set when the log is read over REST
  let wsSubscribed = false;
  const received = { stdout: 0, stderr: 0 }; // bytes of each stream shown, over the WebSocket
  let finalRead = false;
  let gone = false;

  function render(next) {
    const wasLive = task ? isLive(task) : true;
    task = { ...(task || {}), ...next };
    ctx.tasks.set(taskId, task);
    els.title.textContent = task.name || (task.task_type === "inference" ? "Inference task" : "Task");
    clear(els.status).append(statusBadge(task.status));
    updateProgressBar(bar, task);
    els.pct.textContent = `${Math.round(task.progress || 0)}%`;
    els.message.textContent = task.progress_message || "";
    cancelBtn.hidden = !isLive(task);
    renderDetails();
    if (wasLive && !isLive(task)) onFinished();
  }

  function renderDetails() {
    const rows = [
      ["Type", task.task_type], ["Device", deviceLabel(task)],
      ["Entry point", task.entry_point], ["Created", fmtTime(task.created_at)],
      ["Started", fmtTime(task.started_at)], ["Finished", fmtTime(task.completed_at)],
      ["Duration", fmtDuration(taskDuration(task))],
      ["Timeout", task.timeout ? fmtDuration(task.timeout) : "—"],
      ["Queue position", task.queue_position ?? "—"], ["Priority", task.priority ?? 0],
      ["Return code", task.return_code ?? "—"], ["Failure reason", task.failure_reason || "—"],
      ["Model", task.model_id || task.model_name || "—"],
    ];
    clear(els.details).append(...rows.flatMap(([k, v]) => [h("dt", k), h("dd", String(v ?? "—"))]));
    clear(els.result);
    if (task.error) els.result.append(h("div.callout.callout-error#task-error", task.error));
    if (task.result !== null && task.result !== undefined) {
      els.result.append(h("div.result-label", "Result"),
        h("pre.json#task-result-json", JSON.stringify(task.result, null, 2)));
    }
  }

  async function loadTask() {
    try {
      render(await api(`/task/${encodeURIComponent(taskId)}`));
    } catch (err) {
      if (err.status === 404) return notFound();
      throw err;
    }
  }

  function notFound() {
    gone = true;
    stopAll();
    clear(root).append(h("section.panel.empty-state",
      h("h2", "Task not found"),
      h("p.muted", `There is no task ${taskId} (it may have been deleted).`),
      h("a.btn.btn-ghost", { href: "#/tasks" }, "Back to tasks")));
  }

  async function loadFiles() {
    try {
      const data = await api(`/task/${encodeURIComponent(taskId)}/files`);
      const files = data.files || [];
      clear(els.files).append(files.length
        ? h("table.files", h("tbody", files.map((f) => h("tr",
          h("td.mono", h("a.link", { href: tokenUrl(`/task/${encodeURIComponent(taskId)}/files/${f.path.split("/").map(encodeURIComponent).join("/")}`),
                                     download: f.path.split("/").pop() }, f.path)),
          h("td.num.muted", fmtBytes(f.size))))))
        : h("div.empty", "The workspace is empty."));
    } catch (err) {
      if (err.status !== 404) reportError(err);
    }
  }

  // -- the log ----------------------------------------------------------------------------------
  function useRest() {
    if (wsSubscribed) {
      ctx.live.unsubscribe(taskId);
      wsSubscribed = false;
    }
    if (reader) return;
    els.mode.textContent = "polling";
    log.reset();
    reader = new RestLogReader(taskId, log);
    reader.read({ final: task && !isLive(task) }).catch(reportError);
  }

  function useWebSocket() {
    els.mode.textContent = "live";
    wsSubscribed = true;
    ctx.live.subscribe(taskId, { ...received });
  }

  function onOutput(msg) {
    // Single-line messages are the all-tasks feed a client gets before it subscribes; the
    // subscription replays those lines too, so only its batches count.
    if (msg.task_id !== taskId || !wsSubscribed || !msg.batched) return;
    if (typeof msg.offset === "number") {
      if (msg.offset <= received[msg.stream]) return; // already shown (a re-subscription)
      received[msg.stream] = msg.offset;
    }
    log.append(msg.stream, msg.lines);
  }

  function onFinished() {
    if (reader && !finalRead) {
      finalRead = true;
      reader.read({ final: true }).catch(reportError);
    }
    loadFiles();
  }

  async function onCancel() {
    if (task && (await cancelTask(task))) loadTask().catch(reportError);
  }

  async function onDelete() {
    const ok = await confirmDialog({ title: "Delete this task?",
      body: "Its record, workspace files and logs are removed. A running task is cancelled first.",
      ok: "Delete task" });
    if (!ok) return;
    try {
      gone = true;
      stopAll();
      await api(`/task/${encodeURIComponent(taskId)}`, { method: "DELETE" });
      ctx.tasks.delete(taskId);
      toast("Task deleted", "success");
      ctx.navigate("#/tasks");
    } catch (err) {
      reportError(err);
    }
  }

  const stops = [];
  function stopAll() {
    stops.splice(0).forEach((stop) => stop());
    if (wsSubscribed) ctx.live.unsubscribe(taskId);
    wsSubscribed = false;
  }

  (async () => {
    await loadTask();
    if (gone) return;
    if (ctx.live.mode === "websocket") useWebSocket();
    else useRest();
    if (isLive(task)) loadFiles();
    stops.push(
      ctx.live.on("task", (t) => t.task_id === taskId && render(t)),
      ctx.live.on("deleted", (d) => d.task_id === taskId && notFound()),
      ctx.live.on("output", onOutput),
      // A gap: the gateway dropped lines for us; ask again from what we have.
      ctx.live.on("gap", (g) => g.task_id === taskId && wsSubscribed && useWebSocket()),
      ctx.live.on("subscription-error", (e) => e.task_id === taskId
        && (e.code === "task_not_found" ? notFound() : useRest())),
      ctx.live.on("mode", (mode) => mode !== "websocket" && useRest()),
      every(2000, () => (ctx.live.polling && task && isLive(task) ? loadTask() : null)),
      every(1000, () => (reader && task && isLive(task) ? reader.read() : null)),
      every(1000, () => task && task.status === "running" && renderDetails()),
    );
  })().catch(reportError);

  return () => {
    gone = true;
    stopAll();
  };
}

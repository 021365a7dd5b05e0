// Live data: the gateway's WebSocket (/ws) when it has one, else REST polling every 2 s.
//
// Events (CustomEvent detail):
//   "gpus"    {gpus, pool}           GPU metrics + allocations (every 2 s)
//   "task"    task                   a task changed (status, progress)
//   "deleted" {task_id}
//   "output"  {task_id, stream, lines, offset, batched}  log lines of a subscribed task;
//             offset is the byte offset just past the last line
//   "gap"     {task_id, stream, offset}          lines were dropped; subscribe again from offsets
//   "subscription-error" {task_id, code, detail}  the gateway refused a subscription
//   "mode"    "websocket" | "polling" | "offline"
// Views listen to these; in polling mode they also poll what they show (see `polling`).

import { api, wsUrl } from "./api.js";

const HISTORY_SECONDS = 300;
const POLL_MS = 2000;

export class Live extends EventTarget {
  constructor() {
    super();
    this.mode = "offline";
    this.gpus = [];
    this.pool = null;
    this.history = new Map(); // gpu index -> [{t, util, mem}]
    this.ws = null;
    this.wsAvailable = false;
    this.subscriptions = new Map(); // task_id -> offset asked for
    this.retryMs = 1000;
    this.stopped = false;
    this.pollTimer = null;
  }

  start({ websocket }) {
    this.wsAvailable = websocket;
    this.stopped = false;
    if (websocket) this.connect();
    else this.startPolling();
  }

  stop() {
    this.stopped = true;
    this.stopPolling();
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close();
      this.ws = null;
    }
    this.setMode("offline");
  }

  get polling() {
    return this.mode !== "websocket";
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  on(type, fn) {
    const listener = (event) => fn(event.detail);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  setMode(mode) {
    if (this.mode === mode) return;
    this.mode = mode;
    this.emit("mode", mode);
  }

  // -- WebSocket ------------------------------------------------------------------------------
  connect() {
    if (this.stopped) return;
    const ws = new WebSocket(wsUrl("/ws"));
    this.ws = ws;
    ws.onopen = () => {
      this.retryMs = 1000;
      this.stopPolling();
      this.setMode("websocket");
      for (const [taskId, offsets] of this.subscriptions) this.subscribe(taskId, offsets);
    };
    ws.onmessage = (event) => this.handle(event.data);
    ws.onclose = () => {
      this.ws = null;
      if (this.stopped) return;
      this.startPolling(); // keep the page alive while we try again
      setTimeout(() => this.connect(), this.retryMs);
      this.retryMs = Math.min(this.retryMs * 2, 30000);
    };
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  handle(raw) {
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch {
      return;
    }
    switch (msg.type) {
      case "init":
        this.updateGpus(msg.gpus || [], msg.pool || null);
        for (const task of msg.tasks || []) this.emit("task", task);
        break;
      case "gpu_update":
        this.updateGpus(msg.gpus || [], msg.pool || this.pool);
        break;
      case "task_update":
        if (msg.task) this.emit("task", msg.task);
        break;
      case "subscribed":
        if (msg.task) this.emit("task", msg.task);
        break;
      case "task_deleted":
        this.emit("deleted", { task_id: msg.task_id });
        break;
      case "error":
        if (msg.task_id && this.subscriptions.has(msg.task_id)) this.emit("subscription-error", msg);
        break;
      case "task_output":
        this.handleOutput(msg);
        break;
      case "gap":
        if (this.subscriptions.has(msg.task_id)) this.emit("gap", msg);
        break;
      default:
        break;
    }
  }

  handleOutput(msg) {
    if (!this.subscriptions.has(msg.task_id)) return;
    const lines = Array.isArray(msg.lines) ? msg.lines : msg.line !== undefined ? [msg.line] : [];
    this.emit("output", { task_id: msg.task_id, stream: msg.stream || "stdout", lines,
                          offset: msg.offset, batched: Array.isArray(msg.lines) });
  }

  /** Stream a task's output from these byte offsets (replayed, then live). */
  subscribe(taskId, offsets = { stdout: 0, stderr: 0 }) {
    this.subscriptions.set(taskId, offsets);
    this.send({ type: "subscribe", task_id: taskId, offset: offsets.stdout, offsets });
  }

  unsubscribe(taskId) {
    if (!this.subscriptions.delete(taskId)) return;
    this.send({ type: "unsubscribe", task_id: taskId });
  }

  // -- polling --------------------------------------------------------------------------------
  startPolling() {
    if (this.pollTimer !== null) return;
    this.setMode("polling");
    const tick = async () => {
      if (!document.hidden) await this.pollGpus();
      if (this.pollTimer !== null) this.pollTimer = setTimeout(tick, POLL_MS);
    };
    this.pollTimer = setTimeout(tick, 0);
  }

  stopPolling() {
    if (this.pollTimer !== null) clearTimeout(this.pollTimer);
    this.pollTimer = null;
  }

  async pollGpus() {
    try {
      const [report, pool] = await Promise.all([api("/gpu"), api("/gpu/pool")]);
      this.updateGpus(report.devices || [], pool);
      if (this.mode === "offline") this.setMode("polling");
    } catch (err) {
      if (err.name !== "AuthError") this.setMode("offline");
    }
  }

  updateGpus(gpus, pool) {
    this.gpus = gpus;
    this.pool = pool;
    const now = Date.now();
    for (const gpu of gpus) {
      const series = this.history.get(gpu.index) || [];
      const mem = gpu.memory_total_mb ? (100 * gpu.memory_used_mb) / gpu.memory_total_mb : 0;
      series.push({ t: now, util: gpu.utilization_percent ?? 0, mem });
      while (series.length && series[0].t < now - HISTORY_SECONDS * 1000) series.shift();
      this.history.set(gpu.index, series);
    }
    this.emit("gpus", { gpus, pool });
  }
}

export const HISTORY_WINDOW_S = HISTORY_SECONDS;

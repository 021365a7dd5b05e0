// Small shared helpers: DOM building, formatting, toasts and the confirm dialog.

/** h("div.card#x", {dataset: {a: 1}, onclick}, child, "text", [more]) -> Element */
export function h(spec, attrs, ...children) {
  const [, tag = "div", rest = ""] = spec.match(/^([a-z0-9]*)(.*)$/i);
  const el = document.createElement(tag || "div");
  for (const part of rest.match(/[.#][^.#]+/g) || []) {
    if (part[0] === ".") el.classList.add(part.slice(1));
    else el.id = part.slice(1);
  }
  if (attrs !== undefined && attrs !== null
      && (typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "style" && typeof value === "object") {
      for (const [prop, v] of Object.entries(value)) {
        if (prop.startsWith("--")) el.style.setProperty(prop, v);
        else el.style[prop] = v;
      }
    }
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "class") el.className += (el.className ? " " : "") + value;
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

/** Replace el's children; null, undefined and false children are skipped (as in h()). */
export function fill(el, ...children) {
  clear(el);
  append(el, children);
  return el;
}

export const STATUSES = ["pending", "queued", "running", "completed", "failed", "cancelled"];
export const LIVE_STATUSES = new Set(["pending", "queued", "running"]);
export const isLive = (task) => LIVE_STATUSES.has(task.status);

export function statusBadge(status) {
  return h("span.badge", { class: `status-${status}`, dataset: { status } }, status);
}

export function shortId(id) {
  return id ? String(id).slice(0, 8) : "—";
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "—";
  const s = Math.max(0, seconds);
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 60) return `${Math.round(s)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(Math.round(s % 60)).padStart(2, "0")}s`;
  const hr = Math.floor(m / 60);
  return `${hr}h ${String(m % 60).padStart(2, "0")}m`;
}

/** The task's duration: the server's once finished, else counted from its start. */
export function taskDuration(task) {
  if (task.duration !== null && task.duration !== undefined) return task.duration;
  if (!task.started_at) return null;
  const end = task.completed_at ? Date.parse(task.completed_at) : Date.now();
  return (end - Date.parse(task.started_at)) / 1000;
}

export function fmtAgo(iso) {
  if (!iso) return "—";
  const seconds = (Date.now() - Date.parse(iso)) / 1000;
  if (seconds < 5) return "just now";
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}

export function fmtTime(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

export function fmtBytes(bytes) {
  if (bytes === null || bytes === undefined) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = Number(bytes);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value < 10 && unit ? 1 : 0)} ${units[unit]}`;
}

export function fmtMb(mb) {
  return mb === null || mb === undefined ? "—" : fmtBytes(mb * 1024 * 1024);
}

export function deviceLabel(task) {
  if (task.device === "cpu") return "CPU";
  const ids = task.gpu_ids && task.gpu_ids.length ? task.gpu_ids : null;
  if (ids) return `GPU ${ids.join(", ")}`;
  if (task.gpu_id !== null && task.gpu_id !== undefined) return `GPU ${task.gpu_id}`;
  return task.device === "gpu" ? "GPU" : task.device || "—";
}

/** One short line for the table's Result column. */
export function resultSummary(task) {
  if (task.status === "completed") {
    if (task.result !== null && task.result !== undefined) return compactJson(task.result, 60);
    return task.model_id ? `model ${shortId(task.model_id)}` : `exit ${task.return_code ?? 0}`;
  }
  if (task.status === "failed" || task.status === "cancelled") {
    return task.error || task.failure_reason || task.status;
  }
  if (task.status === "queued" && task.queue_position) return `queue #${task.queue_position}`;
  return "";
}

export function compactJson(value, max = 80) {
  let text;
  try {
    text = typeof value === "string" ? value : JSON.stringify(value);
  } catch {
    text = String(value);
  }
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

export function progressBar(task) {
  const pct = clampPct(task.progress);
  const bar = h("div.progress", { dataset: { progress: String(pct) },
                                  role: "progressbar", "aria-valuenow": pct,
                                  "aria-valuemin": 0, "aria-valuemax": 100 },
    h("div.progress-fill", { class: `status-${task.status}`, style: { width: `${pct}%` } }));
  return bar;
}

export function updateProgressBar(bar, task) {
  const pct = clampPct(task.progress);
  bar.dataset.progress = String(pct);
  bar.setAttribute("aria-valuenow", pct);
  const inner = bar.firstChild;
  inner.className = `progress-fill status-${task.status}`;
  inner.style.width = `${pct}%`;
}

export function clampPct(value) {
  const n = Number(value);
  if (!Number.isFinite(n)) return 0;
  return Math.round(Math.min(100, Math.max(0, n)) * 10) / 10;
}

// -- toasts and confirm ---------------------------------------------------------------------

export function toast(message, kind = "info", timeoutMs = 4500) {
  const box = document.getElementById("toasts");
  if (!box) return;
  const item = h("div.toast", { class: `toast-${kind}`, role: "status" }, message);
  box.append(item);
  setTimeout(() => item.classList.add("leaving"), timeoutMs);
  setTimeout(() => item.remove(), timeoutMs + 400);
}

/** An in-page confirm dialog; resolves true when the user confirms. */
export function confirmDialog({ title, body, ok = "Confirm", danger = true }) {
  return new Promise((resolve) => {
    const close = (answer) => {
      overlay.remove();
      document.removeEventListener("keydown", onKey);
      resolve(answer);
    };
    const onKey = (event) => {
      if (event.key === "Escape") close(false);
    };
    const okButton = h("button.btn#confirm-ok", { class: danger ? "btn-danger" : "btn-primary",
                                                   onclick: () => close(true) }, ok);
    const overlay = h("div.modal-overlay", { onclick: (e) => e.target === overlay && close(false) },
      h("div.modal", { role: "dialog", "aria-modal": "true" },
        h("h3", title),
        h("p.muted", body),
        h("div.modal-actions",
          h("button.btn.btn-ghost#confirm-cancel", { onclick: () => close(false) }, "Back"),
          okButton)));
    document.body.append(overlay);
    document.addEventListener("keydown", onKey);
    okButton.focus();
  });
}

/** Run fn every ms while the page is visible; returns a stop function. */
export function every(ms, fn) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    if (stopped) return;
    if (!document.hidden) {
      try {
        await fn();
      } catch (err) {
        reportError(err);
      }
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  timer = setTimeout(tick, 0);
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

/** Errors from background refreshes: a toast once per message, never an uncaught rejection. */
const recentErrors = new Map();
export function reportError(err) {
  if (err && err.name === "AuthError") return; // the login panel is already showing
  const message = err && err.message ? err.message : String(err);
  const last = recentErrors.get(message) || 0;
  if (Date.now() - last > 15000) {
    recentErrors.set(message, Date.now());
    toast(message, "error");
  }
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

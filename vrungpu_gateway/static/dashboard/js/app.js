// The dashboard's entry point: login by token, the header, and a hash router over the views.

import { auth, checkSession, features, onAuthFailure } from "./api.js";
import { mountKernels } from "./kernels.js";
import { Live } from "./live.js";
import { mountModels } from "./models.js";
import { mountOverview } from "./overview.js";
import { mountSubmit } from "./submit.js";
import { mountTask } from "./task.js";
import { mountTasks } from "./tasks.js";
import { clear, h, reportError } from "./util.js";

const ROUTES = [
  { pattern: /^#?\/?$/, view: "overview", mount: mountOverview },
  { pattern: /^#\/tasks$/, view: "tasks", mount: mountTasks },
  { pattern: /^#\/task\/([A-Za-z0-9_.-]+)$/, view: "tasks", mount: mountTask },
  { pattern: /^#\/submit$/, view: "submit", mount: mountSubmit },
  { pattern: /^#\/models$/, view: "models", mount: mountModels },
  { pattern: /^#\/kernels$/, view: "kernels", mount: mountKernels },
];

const $ = (id) => document.getElementById(id);

const ctx = {
  live: null,
  features: { websocket: false, models: false, kernels: false },
  tasks: new Map(), // task_id -> last known task (names for GPU cards and CPU slots)
  pendingHighlight: null,
  navigate(hash) {
    if (location.hash === hash) route();
    else location.hash = hash;
  },
  highlight(taskId) {
    this.pendingHighlight = taskId;
  },
  consumeHighlight() {
    const id = this.pendingHighlight;
    this.pendingHighlight = null;
    return id;
  },
};

let unmount = () => {};

function route() {
  const view = $("view");
  unmount();
  clear(view);
  const hash = location.hash || "#/";
  const match = ROUTES.map((r) => ({ r, m: hash.match(r.pattern) })).find((x) => x.m);
  if (!match) {
    view.append(h("section.panel.empty-state", h("h2", "Not found"),
      h("p.muted", `Nothing at ${hash}.`), h("a.btn.btn-ghost", { href: "#/" }, "Overview")));
    unmount = () => {};
    return;
  }
  document.querySelectorAll(".nav a").forEach((a) =>
    a.classList.toggle("active", a.dataset.view === match.r.view));
  document.body.dataset.view = match.r.view;
  unmount = match.r.mount(view, ctx, ...match.m.slice(1)) || (() => {});
  window.scrollTo(0, 0);
}

// -- login ------------------------------------------------------------------------------------

function showLogin(message) {
  if (ctx.live) ctx.live.stop();
  unmount();
  unmount = () => {};
  document.body.dataset.state = "login";
  $("login-error").textContent = message;
  $("login-error").hidden = !message;
  $("login-token").value = "";
  $("login-token").focus();
}

async function start() {
  let session;
  try {
    session = await checkSession();
  } catch (err) {
    showLogin(`The gateway did not answer (${err.message}). Is it running?`);
    return;
  }
  if (!session.authenticated) {
    showLogin(auth.token
      ? "Wrong or missing token: the gateway refused this token. Paste the token printed when the gateway started (or saved in its data dir as 'token')."
      : "Wrong or missing token: open the dashboard with ?token=<your token> or paste it below.");
    return;
  }
  document.body.dataset.state = "app";
  $("logout").hidden = !session.auth_required;
  try {
    ctx.features = await features();
  } catch (err) {
    reportError(err);
  }
  $("version").textContent = ctx.features.version ? `v${ctx.features.version}` : "";
  ctx.live = ctx.live || createLive();
  // sessionStorage "vrungpu.transport" = "websocket" | "polling" overrides the choice (tests).
  const forced = sessionStorage.getItem("vrungpu.transport");
  ctx.live.start({ websocket: forced ? forced === "websocket" : ctx.features.websocket });
  route();
}

function createLive() {
  const live = new Live();
  live.on("mode", (mode) => {
    const pill = $("conn-status");
    pill.dataset.mode = mode;
    pill.textContent = { websocket: "Live", polling: "Polling", offline: "Offline" }[mode];
    pill.title = { websocket: "Updates pushed over the WebSocket",
                   polling: "Refreshing over REST every 2 s",
                   offline: "The gateway is not reachable" }[mode];
  });
  live.on("task", (task) => ctx.tasks.set(task.task_id, { ...(ctx.tasks.get(task.task_id) || {}), ...task }));
  return live;
}

function wire() {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("login-token").value.trim();
    if (!token) {
      $("login-error").hidden = false;
      $("login-error").textContent = "Paste a token first.";
      return;
    }
    auth.set(token, { remember: $("login-remember").checked });
    start().catch(reportError);
  });
  $("logout").addEventListener("click", () => {
    auth.forget();
    showLogin("");
  });
  window.addEventListener("hashchange", () => {
    if (document.body.dataset.state === "app") route();
  });
  onAuthFailure(() => showLogin(
    "Wrong or missing token: the gateway no longer accepts this token (was it restarted with a new one?)."));
  // Still logged by the browser (a bug should show), but also told to the user.
  window.addEventListener("unhandledrejection", (event) => reportError(event.reason));
}

wire();
auth.adoptFromUrl();
start().catch(reportError);

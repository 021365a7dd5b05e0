// The gateway's REST API as the dashboard uses it: the token, one request helper, feature checks.
//
// The token arrives once as ?token= in the page URL. It is moved into sessionStorage (or
// localStorage when the user asks to be remembered), removed from the address bar, and sent as
// `Authorization: token T` on every request; only WebSocket URLs and download links carry it as
// ?token=, because a browser cannot set headers on those.

const KEY = "vrungpu.token";
const BASE = new URL("..", new URL(document.baseURI)).pathname; // the gateway root, e.g. "/"

export class ApiError extends Error {
  constructor(status, detail, code) {
    super(detail || `HTTP ${status}`);
    this.name = status === 401 ? "AuthError" : "ApiError";
    this.status = status;
    this.code = code;
  }
}

export const auth = {
  get token() {
    return sessionStorage.getItem(KEY) || localStorage.getItem(KEY) || "";
  },
  set(token, { remember = false } = {}) {
    sessionStorage.setItem(KEY, token);
    if (remember) localStorage.setItem(KEY, token);
    else localStorage.removeItem(KEY);
  },
  forget() {
    sessionStorage.removeItem(KEY);
    localStorage.removeItem(KEY);
  },
  /** Take ?token= from the address bar into storage and drop it from the URL. */
  adoptFromUrl() {
    const here = new URL(location.href);
    const token = here.searchParams.get("token");
    if (token === null) return false;
    here.searchParams.delete("token");
    history.replaceState(history.state, "", here.pathname + here.search + here.hash);
    if (token) this.set(token);
    return Boolean(token);
  },
};

export function url(path) {
  return BASE.replace(/\/$/, "") + path;
}

/** A URL that carries the token in its query: for links the browser follows itself. */
export function tokenUrl(path) {
  const full = new URL(url(path), location.href);
  if (auth.token) full.searchParams.set("token", auth.token);
  return full.toString();
}

export function wsUrl(path) {
  const full = new URL(tokenUrl(path));
  full.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  return full.toString();
}

const authListeners = new Set();
export function onAuthFailure(listener) {
  authListeners.add(listener);
}

/** fetch + JSON with our token; throws ApiError carrying the gateway's `detail`. */
export async function api(path, options = {}) {
  return (await request(path, options)).payload;
}

/** A listing that answers a bare array with its total in `X-Total-Count` (`GET /tasks`). */
export async function apiList(path, options = {}) {
  const { payload, res } = await request(path, options);
  const total = Number(res.headers.get("X-Total-Count"));
  const counted = res.headers.has("X-Total-Count") && Number.isFinite(total);
  return { items: payload, total: counted ? total : payload.length };
}

async function request(path, { method = "GET", json, body, headers = {}, signal } = {}) {
  const init = { method, headers: { ...headers }, signal, cache: "no-store" };
  if (auth.token) init.headers.Authorization = `token ${auth.token}`;
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (body !== undefined) {
    init.body = body;
  }
  let res;
  try {
    res = await fetch(url(path), init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "The gateway is not reachable", "network");
  }
  const payload = await readJson(res);
  if (!res.ok) {
    const error = new ApiError(res.status, payload && payload.detail, payload && payload.code);
    if (res.status === 401) authListeners.forEach((listener) => listener(error));
    throw error;
  }
  return { payload, res };
}

async function readJson(res) {
  const text = await res.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return { detail: text.slice(0, 200) };
  }
}

/** Is our token accepted? Asked in a way that answers 200 either way (no console noise). */
export async function checkSession() {
  return api("/dashboard/session");
}

/** Which optional routes this gateway has (from its OpenAPI document). */
export async function features() {
  const spec = await api("/openapi.json");
  const paths = new Set(Object.keys((spec && spec.paths) || {}));
  return {
    websocket: paths.has("/ws"),
    models: paths.has("/models"),
    kernels: paths.has("/api/kernels"),
    version: spec && spec.info ? spec.info.version : "",
  };
}

/** Upload with progress (fetch cannot report upload progress; XHR can). */
export function upload(path, formData, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url(path));
    if (auth.token) xhr.setRequestHeader("Authorization", `token ${auth.token}`);
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable && onProgress) onProgress(event.loaded / event.total);
    };
    xhr.onload = () => {
      let payload = null;
      try {
        payload = xhr.responseText ? JSON.parse(xhr.responseText) : null;
      } catch {
        payload = { detail: xhr.responseText.slice(0, 200) };
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(payload);
      else {
        const error = new ApiError(xhr.status, payload && payload.detail, payload && payload.code);
        if (xhr.status === 401) authListeners.forEach((listener) => listener(error));
        reject(error);
      }
    };
    xhr.onerror = () => reject(new ApiError(0, "The upload failed: gateway not reachable"));
    xhr.send(formData);
  });
}

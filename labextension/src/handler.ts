/**
 * The one way the sidebar talks to the Jupyter server extension that proxies
 * the VrunGPU gateway: REST through `requestAPI`, live updates through `openSocket`.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** Root of the server extension's routes, under the Jupyter base URL. */
const NAMESPACE = 'vrungpu';

/** An HTTP error with the gateway's (or Jupyter's) message and machine code. */
export class VrunGPUError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly code: string | null = null
  ) {
    super(message);
    this.name = 'VrunGPUError';
  }
}

/**
 * Call `<base_url>/vrungpu/<endPoint>` with Jupyter's auth and decode the JSON reply.
 *
 * `endPoint` is e.g. `api/gpu` (proxied to the gateway's `GET /gpu`) or `dashboard`.
 * Rejects with a `VrunGPUError` carrying the gateway's `detail` on a non-2xx reply.
 */
export async function requestAPI<T>(endPoint: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, NAMESPACE, endPoint);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new VrunGPUError(0, `Jupyter server unreachable: ${String(error)}`);
  }
  const text = await response.text();
  let data: unknown = text;
  if (text.length > 0) {
    try {
      data = JSON.parse(text);
    } catch {
      // Not JSON: keep the text, it becomes the error message below.
    }
  }
  if (!response.ok) {
    throw errorFrom(response, data);
  }
  return data as T;
}

/** Open the proxied gateway WebSocket (`<base_url>/vrungpu/ws`). */
export function openSocket(): WebSocket {
  const settings = ServerConnection.makeSettings();
  let url = URLExt.join(settings.wsUrl, NAMESPACE, 'ws');
  if (settings.token) {
    url += `?token=${encodeURIComponent(settings.token)}`;
  }
  return new settings.WebSocket(url);
}

function errorFrom(response: Response, data: unknown): VrunGPUError {
  let message = `HTTP ${response.status} ${response.statusText}`.trim();
  let code: string | null = null;
  if (data !== null && typeof data === 'object') {
    const body = data as Record<string, unknown>;
    const detail = body.detail ?? body.message;
    if (typeof detail === 'string' && detail) {
      message = detail;
    }
    code = typeof body.code === 'string' ? body.code : null;
  } else if (typeof data === 'string' && data.trim()) {
    message = `${message}: ${data.trim().slice(0, 200)}`;
  }
  return new VrunGPUError(response.status, message, code);
}

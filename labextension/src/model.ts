/**
 * Live state of the gateway as the sidebar shows it: GPUs, recent tasks, one
 * task's log. Loads over REST, then follows the proxied WebSocket, reconnecting
 * with backoff and polling REST while the socket is down; `start()`/`stop()`
 * let the panel stand by while hidden.
 */
import { ISignal, Signal } from '@lumino/signaling';

import { openSocket, requestAPI } from './handler';
import {
  ClientMessage,
  GpuHolder,
  IDashboardLink,
  IGpuDevice,
  IGpuInfo,
  IGpuPool,
  ITask,
  ITaskList,
  ITaskLogs,
  ITaskOutput,
  LIVE_STATUSES,
  ServerMessage
} from './tokens';

/** How many tasks the sidebar keeps (newest first). */
export const MAX_TASKS = 20;
const RECONNECT_MIN_MS = 1000;
const RECONNECT_MAX_MS = 30000;
/** REST polling while the WebSocket is down (doubling while requests fail). */
const POLL_MS = 2000;

export type LinkState = 'idle' | 'connecting' | 'open' | 'closed';

export class VrunGPUModel {
  /** Emitted when GPUs, tasks, the link state or the error change. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Emitted with output lines of the subscribed task. */
  get output(): ISignal<this, ITaskOutput> {
    return this._output;
  }

  /** Emitted when the subscribed task's log restarts from the beginning. */
  get logReset(): ISignal<this, string | null> {
    return this._logReset;
  }

  get gpus(): ReadonlyArray<IGpuDevice> {
    return this._gpus;
  }

  get gpuError(): string | null {
    return this._gpuError;
  }

  get pool(): IGpuPool | null {
    return this._pool;
  }

  /** Tasks, newest first, at most `MAX_TASKS` (plus the subscribed one). */
  get tasks(): ITask[] {
    return [...this._tasks.values()].sort(newestFirst);
  }

  task(taskId: string): ITask | undefined {
    return this._tasks.get(taskId);
  }

  /**
   * Who holds GPU `gpu`: a running task that lists it, else the gateway's
   * `holder` (a kernel, a task or a model worker), unless that is a task known
   * to have ended since. Older gateways name only a task (`task_id`, `busy_gpus`).
   */
  holderOf(gpu: IGpuDevice): GpuHolder | null {
    for (const task of this._tasks.values()) {
      if (task.status === 'running' && (task.gpu_ids ?? []).includes(gpu.index)) {
        return { kind: 'task', id: task.task_id };
      }
    }
    const holder = gpu.holder !== undefined ? gpu.holder : this._reportedTask(gpu);
    if (holder?.kind !== 'task') {
      return holder;
    }
    const known = this._tasks.get(holder.id);
    return known && !LIVE_STATUSES.has(known.status) ? null : holder;
  }

  /** True once GPUs and tasks were loaded at least once. */
  get loaded(): boolean {
    return this._loaded;
  }

  /** The last failed gateway request, or null when REST works. */
  get error(): string | null {
    return this._error;
  }

  /** Why live updates are down (the socket closed), or null while they flow. */
  get linkProblem(): string | null {
    return this._linkProblem;
  }

  get linkState(): LinkState {
    return this._linkState;
  }

  /** Seconds until the next reconnection attempt, when one is scheduled. */
  get reconnectInS(): number | null {
    return this._reconnectAt === null
      ? null
      : Math.max(0, Math.round((this._reconnectAt - Date.now()) / 1000));
  }

  get subscribedTask(): string | null {
    return this._subscribed;
  }

  /** Start following the gateway (idempotent). */
  start(): void {
    if (this._running) {
      return;
    }
    this._running = true;
    void this.refresh();
    this._connect();
  }

  /** Stop all network activity until the next `start()`. */
  stop(): void {
    this._running = false;
    this._clearReconnect();
    this._clearPoll();
    const socket = this._socket;
    this._socket = null;
    if (socket) {
      socket.onclose = null;
      socket.close();
    }
    this._setLink('idle');
  }

  /** Reload GPUs and tasks over REST. */
  async refresh(): Promise<void> {
    try {
      const [gpu, list] = await Promise.all([
        requestAPI<IGpuInfo>('api/gpu'),
        requestAPI<ITaskList>(`api/tasks?limit=${MAX_TASKS}`)
      ]);
      this._gpus = gpu.devices ?? [];
      this._gpuError = gpu.error ?? null;
      this._replaceTasks(list ?? []);
      this._loaded = true;
      this._error = null;
      this._failures = 0;
    } catch (error) {
      this._error = (error as Error).message;
      this._failures += 1;
    }
    this._changed.emit();
    this._schedulePoll();
  }

  /** Show `taskId`'s log: replayed from the start, then live. */
  subscribe(taskId: string | null): void {
    if (this._subscribed === taskId) {
      return;
    }
    if (this._subscribed) {
      this._send({ type: 'unsubscribe', task_id: this._subscribed });
    }
    this._subscribed = taskId;
    this._logReset.emit(taskId);
    if (taskId === null) {
      return;
    }
    if (this._linkState === 'open') {
      this._subscribeFrom({});
    } else {
      void this._loadLogTail(taskId); // the `init` handler subscribes later
    }
  }

  /** Ask the gateway to cancel a task; resolves with its fresh state. */
  async cancel(taskId: string): Promise<void> {
    await requestAPI<unknown>(`api/task/${encodeURIComponent(taskId)}/cancel`, {
      method: 'POST'
    });
    const task = await requestAPI<ITask>(`api/task/${encodeURIComponent(taskId)}`);
    this._upsert(task);
    this._changed.emit();
  }

  /** The gateway's dashboard URL (with its token), from the server extension. */
  async dashboardURL(): Promise<string> {
    return (await requestAPI<IDashboardLink>('dashboard')).url;
  }

  dispose(): void {
    this.stop();
    Signal.clearData(this);
  }

  private _connect(): void {
    this._clearReconnect();
    this._setLink('connecting');
    const socket = openSocket();
    this._socket = socket;
    socket.onmessage = event => this._handle(event.data);
    socket.onclose = event => {
      if (this._socket !== socket) {
        return;
      }
      this._socket = null;
      const why = event.reason ? `: ${event.reason}` : '';
      this._linkProblem = `Live updates unavailable (code ${event.code}${why})`;
      this._setLink('closed');
      this._scheduleReconnect();
      this._schedulePoll();
    };
  }

  /**
   * The gateway's `init` arrived: the link is live (the proxy accepts the socket
   * before it reaches the gateway, so `onopen` alone proves nothing).
   */
  private _goLive(): void {
    this._attempts = 0;
    this._failures = 0;
    this._linkProblem = null;
    this._clearPoll();
    this._linkState = 'open';
    if (this._subscribed) {
      // A fresh subscription replays the whole log, so the view starts over.
      this._logReset.emit(this._subscribed);
      this._subscribeFrom({});
    }
  }

  /**
   * (Re)subscribe to the shown task from byte offsets per stream. Output that
   * arrives before the gateway's `subscribed` is dropped: the replay holds it.
   */
  private _subscribeFrom(offsets: Record<string, number>): void {
    const taskId = this._subscribed;
    if (!taskId) {
      return;
    }
    this._covered = { stdout: 0, stderr: 0, ...offsets };
    this._awaitingReplay = this._send({
      type: 'subscribe',
      task_id: taskId,
      offsets: this._covered
    });
  }

  private _scheduleReconnect(): void {
    if (!this._running) {
      return;
    }
    const base = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * 2 ** this._attempts);
    const delay = base / 2 + Math.random() * (base / 2);
    this._attempts += 1;
    this._reconnectAt = Date.now() + delay;
    this._timer = window.setTimeout(() => this._connect(), delay);
    this._changed.emit();
  }

  /** While the socket is down, poll REST (and the shown log) instead. */
  private _schedulePoll(): void {
    this._clearPoll();
    if (!this._running || this._linkState === 'open') {
      return;
    }
    const delay = Math.min(RECONNECT_MAX_MS, POLL_MS * 2 ** this._failures);
    this._pollTimer = window.setTimeout(() => {
      this._pollTimer = null;
      if (this._subscribed) {
        void this._loadLogTail(this._subscribed, true);
      }
      void this.refresh();
    }, delay);
  }

  private _clearPoll(): void {
    if (this._pollTimer !== null) {
      window.clearTimeout(this._pollTimer);
      this._pollTimer = null;
    }
  }

  private _clearReconnect(): void {
    if (this._timer !== null) {
      window.clearTimeout(this._timer);
      this._timer = null;
    }
    this._reconnectAt = null;
  }

  private _send(message: ClientMessage): boolean {
    const socket = this._socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      return false;
    }
    socket.send(JSON.stringify(message));
    return true;
  }

  private _handle(data: unknown): void {
    if (typeof data !== 'string') {
      return;
    }
    let message: ServerMessage;
    try {
      message = JSON.parse(data) as ServerMessage;
    } catch {
      return;
    }
    switch (message.type) {
      case 'init':
        this._setGpus(message.gpus, message.pool);
        if (message.tasks) {
          this._replaceTasks(message.tasks);
        }
        this._loaded = true;
        this._error = null;
        this._goLive();
        break;
      case 'gpu_update':
        this._setGpus(message.gpus, message.pool);
        break;
      case 'task_update':
        this._upsert(message.task);
        break;
      case 'task_output':
        this._emitOutput(message);
        return;
      case 'subscribed':
        if (message.task_id === this._subscribed) {
          this._awaitingReplay = false;
        }
        return;
      case 'gap':
        // This client fell behind: resume the stream from where it stopped.
        if (message.task_id && message.task_id === this._subscribed && message.stream) {
          this._subscribeFrom({ ...this._covered, [message.stream]: message.offset ?? 0 });
        }
        return;
      case 'error':
        if (message.task_id && message.task_id === this._subscribed) {
          void this._loadLogTail(message.task_id);
        }
        console.warn('VrunGPU gateway:', message.detail ?? message.code);
        return;
      default:
        return;
    }
    this._changed.emit();
  }

  private _emitOutput(message: Extract<ServerMessage, { type: 'task_output' }>): void {
    if (message.task_id !== this._subscribed || this._awaitingReplay) {
      return;
    }
    if (message.offset !== undefined) {
      this._covered[message.stream] = message.offset;
    }
    const lines = message.lines ?? (message.line !== undefined ? [message.line] : []);
    if (lines.length > 0) {
      this._output.emit({ taskId: message.task_id, stream: message.stream, lines });
    }
  }

  /** The log's last lines over REST; `replace` starts the view over. */
  private async _loadLogTail(taskId: string, replace = false): Promise<void> {
    try {
      const logs = await requestAPI<ITaskLogs>(
        `api/task/${encodeURIComponent(taskId)}/logs?stream=all&tail=200`
      );
      if (this._subscribed !== taskId || this._linkState === 'open') {
        return;
      }
      if (replace) {
        this._logReset.emit(taskId);
      }
      if (logs.content) {
        const lines = logs.content.replace(/\n$/, '').split('\n');
        this._output.emit({ taskId, stream: logs.stream, lines });
      }
    } catch (error) {
      this._error = `Could not load the log: ${(error as Error).message}`;
      this._changed.emit();
    }
  }

  private _reportedTask(gpu: IGpuDevice): GpuHolder | null {
    const busy = Object.entries(this._pool?.busy_gpus ?? {});
    const id = gpu.task_id ?? busy.find(([, index]) => index === gpu.index)?.[0] ?? null;
    return id ? { kind: 'task', id } : null;
  }

  private _setGpus(gpus: unknown, pool?: IGpuPool): void {
    // `gpus` is the device list; accept the `GET /gpu` object too.
    if (Array.isArray(gpus)) {
      this._gpus = gpus as IGpuDevice[];
    } else if (gpus && typeof gpus === 'object' && 'devices' in gpus) {
      const info = gpus as IGpuInfo;
      this._gpus = info.devices ?? [];
      this._gpuError = info.error ?? null;
    }
    if (pool) {
      this._pool = pool;
    }
  }

  private _replaceTasks(tasks: ITask[]): void {
    const keep = this._subscribed ? this._tasks.get(this._subscribed) : undefined;
    this._tasks.clear();
    for (const task of tasks) {
      this._tasks.set(task.task_id, task);
    }
    if (keep && !this._tasks.has(keep.task_id)) {
      this._tasks.set(keep.task_id, keep);
    }
    this._trim();
  }

  private _upsert(task: ITask): void {
    const old = this._tasks.get(task.task_id);
    this._tasks.set(task.task_id, old ? { ...old, ...task } : task);
    this._trim();
  }

  private _trim(): void {
    const sorted = this.tasks;
    for (const task of sorted.slice(MAX_TASKS)) {
      if (task.task_id !== this._subscribed) {
        this._tasks.delete(task.task_id);
      }
    }
  }

  private _setLink(state: LinkState): void {
    this._linkState = state;
    this._changed.emit();
  }

  private _running = false;
  private _socket: WebSocket | null = null;
  private _attempts = 0;
  private _timer: number | null = null;
  private _pollTimer: number | null = null;
  private _failures = 0;
  private _linkProblem: string | null = null;
  private _reconnectAt: number | null = null;
  private _gpus: IGpuDevice[] = [];
  private _gpuError: string | null = null;
  private _pool: IGpuPool | null = null;
  private _tasks = new Map<string, ITask>();
  private _subscribed: string | null = null;
  private _awaitingReplay = false;
  private _covered: Record<string, number> = {};
  private _loaded = false;
  private _error: string | null = null;
  private _linkState: LinkState = 'idle';
  private _changed = new Signal<this, void>(this);
  private _output = new Signal<this, ITaskOutput>(this);
  private _logReset = new Signal<this, string | null>(this);
}

function newestFirst(a: ITask, b: ITask): number {
  return timeOf(b.created_at) - timeOf(a.created_at);
}

function timeOf(iso: string | null | undefined): number {
  const t = iso ? Date.parse(iso) : NaN;
  return Number.isNaN(t) ? Number.MAX_SAFE_INTEGER : t;
}

/**
 * The three parts of the sidebar: GPUs, the task list and one task's live log.
 * Each is a plain Lumino widget that renders from the shared `VrunGPUModel`.
 */
import { Widget } from '@lumino/widgets';

import {
  el,
  formatDuration,
  holderLabel,
  formatMb,
  formatPct,
  makeBar,
  setBar,
  shortId,
  kernelPlace,
  taskLabel,
  taskPlace
} from './format';
import { KernelsModel } from './kernels';
import { VrunGPUModel } from './model';
import { GpuHolder, IGpuDevice, IKernel, ITask, ITaskOutput, LIVE_STATUSES } from './tokens';

/** Most log lines kept in the view; older ones are dropped. */
const MAX_LOG_LINES = 2000;

/** Called when the user picks a task (in the task list or a GPU's holder). */
export type SelectTask = (taskId: string) => void;

function sectionHeading(title: string): [HTMLElement, HTMLElement] {
  const head = el('div', 'jp-VrunGPU-sectionHead');
  const note = el('span', 'jp-VrunGPU-sectionNote');
  head.append(el('h3', 'jp-VrunGPU-sectionTitle', title), note);
  return [head, note];
}

/** GPU rows: utilisation and memory bars, and the task holding each GPU. */
export class GpuSection extends Widget {
  constructor(
    private readonly _model: VrunGPUModel,
    onSelect: SelectTask
  ) {
    super();
    this.addClass('jp-VrunGPU-section');
    this.addClass('jp-VrunGPU-gpus');
    const [head, note] = sectionHeading('GPUs');
    this._note = note;
    this.node.append(head, this._list);
    this._list.addEventListener('click', event => {
      const link = (event.target as HTMLElement).closest<HTMLElement>('[data-task-id]');
      if (link?.dataset.taskId) {
        onSelect(link.dataset.taskId);
      }
    });
  }

  render(): void {
    const gpus = this._model.gpus;
    const holders = gpus.map(gpu => this._model.holderOf(gpu));
    const key = JSON.stringify([gpus, holders, this._model.gpuError, this._model.loaded]);
    if (key === this._lastKey) {
      return; // unchanged: keep the DOM (and any pointer on it) as it is
    }
    this._lastKey = key;
    const free = holders.filter(holder => !holder).length;
    this._note.textContent = gpus.length ? `${free} of ${gpus.length} free` : '';
    this._list.replaceChildren(...gpus.map(gpu => this._row(gpu)));
    if (gpus.length === 0) {
      const text = this._model.gpuError
        ? `GPU query failed: ${this._model.gpuError}`
        : this._model.loaded
          ? 'No GPUs on this host; tasks run in CPU slots.'
          : this._model.error
            ? 'Unavailable.'
            : 'Loading...';
      this._list.append(el('div', 'jp-VrunGPU-empty', text));
    }
  }

  private _row(gpu: IGpuDevice): HTMLElement {
    const row = el('div', 'jp-VrunGPU-gpu');
    row.dataset.gpuIndex = String(gpu.index);
    const holder = this._model.holderOf(gpu);
    row.dataset.busy = String(Boolean(holder));
    const head = el('div', 'jp-VrunGPU-gpuHead');
    head.append(el('span', 'jp-VrunGPU-gpuIndex', `GPU ${gpu.index}`));
    if (gpu.simulated) {
      head.append(el('span', 'jp-VrunGPU-tag', 'sim'));
    }
    if (gpu.temperature_c !== null && gpu.temperature_c !== undefined) {
      head.append(el('span', 'jp-VrunGPU-gpuTemp', `${Math.round(gpu.temperature_c)}°C`));
    }
    const name = el('div', 'jp-VrunGPU-gpuName', gpu.name);
    name.title = gpu.uuid ? `${gpu.name} (${gpu.uuid})` : gpu.name;
    const total = gpu.memory_total_mb ?? 0;
    const used = gpu.memory_used_mb ?? 0;
    const memPct = total > 0 ? (100 * used) / total : 0;
    row.append(
      head,
      name,
      this._meter('util', gpu.utilization_percent, formatPct(gpu.utilization_percent)),
      this._meter('mem', memPct, `${formatMb(used)} / ${formatMb(total)}`),
      this._holderLine(holder)
    );
    return row;
  }

  private _meter(kind: string, pct: number | null, text: string): HTMLElement {
    const meter = el('div', `jp-VrunGPU-meter jp-VrunGPU-meter-${kind}`);
    const bar = makeBar(`jp-VrunGPU-${kind}Bar`);
    setBar(bar, pct);
    meter.append(
      el('span', 'jp-VrunGPU-meterLabel', kind),
      bar,
      el('span', 'jp-VrunGPU-meterValue', text)
    );
    return meter;
  }

  private _holderLine(holder: GpuHolder | null): HTMLElement {
    const line = el('div', 'jp-VrunGPU-holder');
    line.dataset.holderKind = holder?.kind ?? '';
    if (!holder) {
      line.textContent = 'idle';
      return line;
    }
    if (holder.kind !== 'task') {
      const who = el('span', 'jp-VrunGPU-holderName', holderLabel(holder));
      who.title = holder.id;
      line.append('held by ', who);
      return line;
    }
    const task = this._model.task(holder.id);
    const link = el('button', 'jp-VrunGPU-holderLink', task ? taskLabel(task) : shortId(holder.id));
    link.dataset.taskId = holder.id;
    link.title = `Show task ${holder.id}`;
    line.append('held by ', link);
    return line;
  }

  private _list = el('div', 'jp-VrunGPU-gpuList');
  private _note: HTMLElement;
  private _lastKey = '';
}

/** Called when the user asks to stop a kernel. */
export type StopKernel = (kernel: IKernel) => void;

/** Remote kernels and sessions: session, GPUs, state, idle time and a Stop button. */
export class KernelSection extends Widget {
  constructor(
    private readonly _kernels: KernelsModel,
    onStop: StopKernel
  ) {
    super();
    this.addClass('jp-VrunGPU-section');
    this.addClass('jp-VrunGPU-kernels');
    const [head, note] = sectionHeading('Kernels');
    this._note = note;
    this._list.setAttribute('role', 'list');
    this.node.append(head, this._list);
    this._list.addEventListener('click', event => {
      const button = (event.target as HTMLElement).closest<HTMLElement>('[data-stop-kernel]');
      const kernel = this._kernels.kernels.find(k => k.id === button?.dataset.stopKernel);
      if (kernel) {
        onStop(kernel);
      }
    });
  }

  render(): void {
    const kernels = this._kernels.kernels;
    const busy = kernels.filter(kernel => kernel.execution_state === 'busy').length;
    this._note.textContent = kernels.length ? `${kernels.length} running · ${busy} busy` : '';
    const seen = new Set<string>();
    const rows = kernels.map(kernel => {
      seen.add(kernel.id);
      return this._update(kernel);
    });
    for (const id of [...this._rows.keys()].filter(id => !seen.has(id))) {
      this._rows.get(id)?.remove();
      this._rows.delete(id);
    }
    this._list.replaceChildren(...rows);
    if (rows.length === 0) {
      this._list.append(el('div', 'jp-VrunGPU-empty', this._emptyText()));
    }
  }

  private _emptyText(): string {
    if (!this._kernels.supported) {
      return 'This gateway runs no remote kernels.';
    }
    if (this._kernels.error) {
      return `Kernels unavailable: ${this._kernels.error}`;
    }
    return this._kernels.loaded ? 'No kernels. %%vrungpu --session NAME starts one.' : 'Loading...';
  }

  /** Update (or create) a kernel's row in place, so a poll does not move its Stop button. */
  private _update(kernel: IKernel): HTMLElement {
    let row = this._rows.get(kernel.id);
    if (!row) {
      row = this._create(kernel.id);
      this._rows.set(kernel.id, row);
    }
    const state = kernel.execution_state || 'unknown';
    row.dataset.state = state;
    const part = (name: string) => row!.querySelector(`.jp-VrunGPU-${name}`) as HTMLElement;
    part('kernelSession').textContent = kernel.session || '—';
    part('kernelSession').title = kernel.session ? `session ${kernel.session}` : 'no session';
    const badge = part('badge');
    badge.textContent = state;
    badge.dataset.state = state;
    part('kernelPlace').textContent = kernelPlace(kernel);
    const idle = state === 'busy' ? 'running a cell' : `idle ${formatDuration(kernel.idle_s)}`;
    part('kernelMeta').textContent = `${idle} · ${shortId(kernel.id)} · ${kernel.name}`;
    part('kernelMeta').title = `kernel ${kernel.id}`;
    const stop = part('kernelStop') as HTMLButtonElement;
    stop.disabled = this._kernels.isStopping(kernel.id);
    return row;
  }

  private _create(kernelId: string): HTMLElement {
    const row = el('div', 'jp-VrunGPU-kernel');
    row.dataset.kernelId = kernelId;
    row.setAttribute('role', 'listitem');
    const top = el('div', 'jp-VrunGPU-taskTop');
    top.append(
      el('span', 'jp-VrunGPU-badge'),
      el('span', 'jp-VrunGPU-kernelSession'),
      el('span', 'jp-VrunGPU-kernelPlace')
    );
    const stop = el('button', 'jp-VrunGPU-kernelStop jp-mod-styled jp-mod-warn', 'Stop');
    stop.dataset.stopKernel = kernelId;
    stop.title = 'Stop this kernel: its variables are lost, its GPUs freed';
    const bottom = el('div', 'jp-VrunGPU-kernelBottom');
    bottom.append(el('span', 'jp-VrunGPU-kernelMeta'), stop);
    row.append(top, bottom);
    return row;
  }

  private _list = el('div', 'jp-VrunGPU-kernelList');
  private _rows = new Map<string, HTMLElement>();
  private _note: HTMLElement;
}

/** Recent tasks, newest first, each with a status badge and a live progress bar. */
export class TaskSection extends Widget {
  constructor(
    private readonly _model: VrunGPUModel,
    onSelect: SelectTask
  ) {
    super();
    this.addClass('jp-VrunGPU-section');
    this.addClass('jp-VrunGPU-tasks');
    const [head, note] = sectionHeading('Tasks');
    this._note = note;
    this._list.setAttribute('role', 'list');
    this.node.append(head, this._list);
    this._list.addEventListener('click', event => {
      const row = (event.target as HTMLElement).closest<HTMLElement>('[data-task-id]');
      if (row?.dataset.taskId) {
        onSelect(row.dataset.taskId);
      }
    });
    this._list.addEventListener('keydown', event => {
      const row = (event.target as HTMLElement).closest<HTMLElement>('[data-task-id]');
      if (row?.dataset.taskId && (event.key === 'Enter' || event.key === ' ')) {
        event.preventDefault();
        onSelect(row.dataset.taskId);
      }
    });
  }

  render(): void {
    const tasks = this._model.tasks;
    const live = tasks.filter(task => LIVE_STATUSES.has(task.status)).length;
    this._note.textContent = tasks.length ? `${live} live · ${tasks.length} shown` : '';
    const seen = new Set<string>();
    const rows = tasks.map(task => {
      seen.add(task.task_id);
      return this._update(task);
    });
    for (const [id, row] of this._rows) {
      if (!seen.has(id)) {
        row.remove();
        this._rows.delete(id);
      }
    }
    this._empty.remove();
    this._list.replaceChildren(...rows);
    if (rows.length === 0) {
      this._empty.textContent = this._model.loaded
        ? 'No tasks yet.'
        : this._model.error
          ? 'Unavailable.'
          : 'Loading...';
      this._list.append(this._empty);
    }
  }

  /** Update (or create) a task's row in place, so bars animate smoothly. */
  private _update(task: ITask): HTMLElement {
    let row = this._rows.get(task.task_id);
    if (!row) {
      row = this._create(task.task_id);
      this._rows.set(task.task_id, row);
    }
    const progress = task.status === 'completed' ? 100 : (task.progress ?? 0);
    row.dataset.status = task.status;
    row.dataset.progress = String(progress);
    row.classList.toggle('jp-mod-selected', task.task_id === this._model.subscribedTask);
    row.setAttribute('aria-selected', String(task.task_id === this._model.subscribedTask));
    const part = (name: string) => row!.querySelector(`.jp-VrunGPU-${name}`) as HTMLElement;
    const badge = part('badge');
    badge.textContent = task.status;
    badge.dataset.status = task.status;
    part('taskName').textContent = taskLabel(task);
    part('taskName').title = task.task_id;
    part('taskPlace').textContent = taskPlace(task);
    setBar(part('progressBar'), progress);
    part('taskMessage').textContent = describe(task);
    return row;
  }

  private _create(taskId: string): HTMLElement {
    const row = el('div', 'jp-VrunGPU-task');
    row.dataset.taskId = taskId;
    row.tabIndex = 0;
    row.setAttribute('role', 'listitem');
    const top = el('div', 'jp-VrunGPU-taskTop');
    top.append(
      el('span', 'jp-VrunGPU-badge'),
      el('span', 'jp-VrunGPU-taskName'),
      el('span', 'jp-VrunGPU-taskPlace')
    );
    row.append(top, makeBar('jp-VrunGPU-progressBar'), el('div', 'jp-VrunGPU-taskMessage'));
    return row;
  }

  private _list = el('div', 'jp-VrunGPU-taskList');
  private _empty = el('div', 'jp-VrunGPU-empty');
  private _rows = new Map<string, HTMLElement>();
  private _note: HTMLElement;
}

/** One line under a task's bar: progress and message, or how it ended. */
function describe(task: ITask): string {
  const pct = formatPct(task.status === 'completed' ? 100 : task.progress);
  switch (task.status) {
    case 'pending':
      return 'waiting to be scheduled';
    case 'queued':
      return task.queue_position ? `queued, position ${task.queue_position}` : 'queued';
    case 'running':
      return task.progress_message ? `${pct} · ${task.progress_message}` : pct;
    case 'failed':
      return task.error ? `failed: ${task.error}` : 'failed';
    default: {
      const took = formatDuration(task.duration);
      return [task.status, took && `in ${took}`].filter(Boolean).join(' ');
    }
  }
}

/** The selected task's live log, with Cancel and close buttons. */
export class LogSection extends Widget {
  constructor(
    private readonly _model: VrunGPUModel,
    private readonly _onCancel: (taskId: string) => Promise<void>,
    onClose: () => void
  ) {
    super();
    this.addClass('jp-VrunGPU-section');
    this.addClass('jp-VrunGPU-logSection');
    const head = el('div', 'jp-VrunGPU-sectionHead');
    const close = el('button', 'jp-VrunGPU-close jp-mod-styled', '×');
    close.title = 'Close the log';
    close.addEventListener('click', onClose);
    this._cancel.title = 'Cancel this task';
    this._cancel.addEventListener('click', () => void this._cancelTask());
    head.append(this._title, close);
    const actions = el('div', 'jp-VrunGPU-logActions');
    actions.append(this._badge, this._progress, this._cancel);
    this._log.setAttribute('aria-live', 'off');
    this.node.append(head, actions, this._log);
    _model.logReset.connect((_, taskId) => this._reset(taskId));
    _model.output.connect((_, out) => this._append(out));
    this.hide();
  }

  render(): void {
    const taskId = this._model.subscribedTask;
    const task = taskId ? this._model.task(taskId) : undefined;
    this.setHidden(!taskId);
    if (!taskId) {
      return;
    }
    this.node.dataset.taskId = taskId;
    this._title.textContent = `Log · ${task ? taskLabel(task) : shortId(taskId)}`;
    this._title.title = taskId;
    const status = task?.status ?? '';
    this._badge.textContent = status;
    this._badge.dataset.status = status;
    this._progress.textContent = task ? describe(task) : '';
    this._cancel.disabled = this._busy || !LIVE_STATUSES.has(status);
  }

  private _reset(taskId: string | null): void {
    this._log.replaceChildren();
    this._lineCount = 0;
    this._log.append(el('span', 'jp-VrunGPU-logNote', taskId ? 'Waiting for output...\n' : ''));
    this.render();
  }

  private _append(out: ITaskOutput): void {
    const stick = this._log.scrollTop + this._log.clientHeight >= this._log.scrollHeight - 4;
    this._log.querySelector('.jp-VrunGPU-logNote')?.remove();
    const chunk = el('span', `jp-VrunGPU-log-${out.stream === 'stderr' ? 'stderr' : 'stdout'}`);
    chunk.textContent = out.lines.map(line => line.replace(/\n$/, '') + '\n').join('');
    this._log.append(chunk);
    this._lineCount += out.lines.length;
    while (this._lineCount > MAX_LOG_LINES && this._log.firstChild) {
      const first = this._log.firstChild as HTMLElement;
      this._lineCount -= (first.textContent ?? '').split('\n').length - 1;
      first.remove();
    }
    if (stick) {
      this._log.scrollTop = this._log.scrollHeight;
    }
  }

  private async _cancelTask(): Promise<void> {
    const taskId = this._model.subscribedTask;
    if (!taskId) {
      return;
    }
    this._busy = true;
    this.render();
    try {
      await this._onCancel(taskId);
    } finally {
      this._busy = false;
      this.render();
    }
  }

  private _title = el('span', 'jp-VrunGPU-logTitle');
  private _badge = el('span', 'jp-VrunGPU-badge');
  private _progress = el('span', 'jp-VrunGPU-logProgress');
  private _cancel = el('button', 'jp-VrunGPU-cancel jp-mod-styled jp-mod-warn', 'Cancel');
  private _log = el('pre', 'jp-VrunGPU-log');
  private _lineCount = 0;
  private _busy = false;
}

/**
 * Small pure helpers for the sidebar's DOM: element creation and number/label
 * formatting. No JupyterLab imports, so they stay trivially testable.
 */
import { GpuHolder, IKernel, ITask } from './tokens';

/** Create an element with a class name and optional text. */
export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className = '',
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/** Clamp a percentage to 0-100; null/NaN become 0. */
export function clampPct(value: number | null | undefined): number {
  if (value === null || value === undefined || Number.isNaN(value)) {
    return 0;
  }
  return Math.min(100, Math.max(0, value));
}

/** `12.5%`, `40%`. */
export function formatPct(value: number | null | undefined): string {
  const pct = clampPct(value);
  return `${Number.isInteger(pct) ? pct : pct.toFixed(1)}%`;
}

/** Megabytes as a short human string: `812 MiB`, `15.8 GiB`. */
export function formatMb(mb: number | null | undefined): string {
  if (mb === null || mb === undefined || Number.isNaN(mb)) {
    return '?';
  }
  return mb >= 1024 ? `${(mb / 1024).toFixed(1)} GiB` : `${Math.round(mb)} MiB`;
}

/** The first block of a task id, enough to tell tasks apart. */
export function shortId(taskId: string): string {
  return taskId.split('-')[0].slice(0, 8);
}

/** A task's display name: its name, else its short id. */
export function taskLabel(task: Pick<ITask, 'task_id' | 'name'>): string {
  return task.name || shortId(task.task_id);
}

/** Where a task runs: `GPU 0`, `GPU 0,1`, `CPU`, or nothing yet. */
export function taskPlace(task: ITask): string {
  const ids =
    task.gpu_ids ?? (task.gpu_id !== null && task.gpu_id !== undefined ? [task.gpu_id] : []);
  if (ids.length > 0) {
    return `GPU ${ids.join(',')}`;
  }
  return task.device === 'cpu' ? 'CPU' : '';
}

/** Where a kernel runs: `GPU 0`, `GPU 0,1`, `CPU`, or its place in the queue. */
export function kernelPlace(kernel: IKernel): string {
  if (kernel.gpus.length > 0) {
    return `GPU ${kernel.gpus.join(',')}`;
  }
  if (kernel.queue_position) {
    return `queued #${kernel.queue_position}`;
  }
  return kernel.device === 'cpu' ? 'CPU' : '';
}

/** A GPU's holder in words: `kernel 96be517c (session train)`, `model worker 5e6f7a8b`. */
export function holderLabel(holder: GpuHolder): string {
  switch (holder.kind) {
    case 'kernel':
      return (
        `kernel ${shortId(holder.id)}` + (holder.session ? ` (session ${holder.session})` : '')
      );
    case 'worker':
      return `model worker ${shortId(holder.model_id)}`;
    default:
      return `task ${shortId(holder.id)}`;
  }
}

/** Seconds as `42 s`, `3 min 5 s`, `2 h 10 min`. */
export function formatDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) {
    return '';
  }
  const s = Math.round(seconds);
  if (s < 60) {
    return `${s} s`;
  }
  if (s < 3600) {
    return `${Math.floor(s / 60)} min ${s % 60} s`;
  }
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** A horizontal bar; update it with `setBar`. */
export function makeBar(className: string): HTMLDivElement {
  const bar = el('div', `jp-VrunGPU-bar ${className}`);
  bar.setAttribute('role', 'progressbar');
  bar.setAttribute('aria-valuemin', '0');
  bar.setAttribute('aria-valuemax', '100');
  bar.append(el('div', 'jp-VrunGPU-barFill'));
  return bar;
}

export function setBar(bar: HTMLElement, pct: number | null | undefined): void {
  const value = clampPct(pct);
  bar.setAttribute('aria-valuenow', String(value));
  (bar.firstElementChild as HTMLElement).style.width = `${value}%`;
}

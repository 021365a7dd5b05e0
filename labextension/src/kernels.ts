/**
 * The gateway's remote kernels (sessions) as the sidebar lists them. Kernels are
 * not on the gateway's WebSocket, so they are polled over REST, only between
 * `start()` and `stop()` (while the panel is shown); `stopKernel` shuts one down.
 */
import { ISignal, Signal } from '@lumino/signaling';

import { requestAPI, VrunGPUError } from './handler';
import { IKernel } from './tokens';

/** How often the kernel list is reloaded while the panel is shown. */
export const KERNEL_POLL_MS = 3000;

/** The gateway's kernel routes, through the proxy (`vrungpu/api/` + gateway path). */
const KERNELS_PATH = 'api/api/kernels';

export class KernelsModel {
  /** Emitted when the list, its error or a stop in progress change. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Live kernels, oldest first (as the gateway lists them). */
  get kernels(): ReadonlyArray<IKernel> {
    return this._kernels;
  }

  /** True once the list was loaded at least once. */
  get loaded(): boolean {
    return this._loaded;
  }

  /** False when the gateway has no kernel routes (an older gateway). */
  get supported(): boolean {
    return this._supported;
  }

  /** The last failed load, or null. */
  get error(): string | null {
    return this._error;
  }

  /** Whether a stop of `kernelId` is on its way. */
  isStopping(kernelId: string): boolean {
    return this._stopping.has(kernelId);
  }

  /** Load now, then every `KERNEL_POLL_MS` until `stop()` (idempotent). */
  start(): void {
    if (this._running) {
      return;
    }
    this._running = true;
    void this._tick(++this._generation);
  }

  /** Stop polling until the next `start()`. */
  stop(): void {
    this._running = false;
    if (this._timer !== null) {
      window.clearTimeout(this._timer);
      this._timer = null;
    }
  }

  /** Reload the list over REST. */
  async refresh(): Promise<void> {
    try {
      this._kernels = await requestAPI<IKernel[]>(KERNELS_PATH);
      this._loaded = true;
      this._error = null;
    } catch (error) {
      if (error instanceof VrunGPUError && error.status === 404) {
        this._supported = false;
        this.stop();
      }
      this._error = (error as Error).message;
    }
    this._changed.emit();
  }

  /** Shut a kernel down (its GPUs go back to the pool), then reload the list. */
  async stopKernel(kernelId: string): Promise<void> {
    this._stopping.add(kernelId);
    this._changed.emit();
    try {
      await requestAPI<unknown>(`${KERNELS_PATH}/${encodeURIComponent(kernelId)}`, {
        method: 'DELETE'
      });
    } finally {
      this._stopping.delete(kernelId);
      await this.refresh();
    }
  }

  dispose(): void {
    this.stop();
    Signal.clearData(this);
  }

  /** One load; the next is scheduled only by the latest `start()`'s chain. */
  private async _tick(generation: number): Promise<void> {
    this._timer = null;
    await this.refresh();
    if (this._running && this._supported && generation === this._generation) {
      this._timer = window.setTimeout(() => void this._tick(generation), KERNEL_POLL_MS);
    }
  }

  private _running = false;
  private _timer: number | null = null;
  private _generation = 0;
  private _kernels: IKernel[] = [];
  private _loaded = false;
  private _supported = true;
  private _error: string | null = null;
  private _stopping = new Set<string>();
  private _changed = new Signal<this, void>(this);
}

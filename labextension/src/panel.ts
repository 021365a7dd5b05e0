/**
 * The VrunGPU left-sidebar panel: a header with the connection status, a
 * toolbar (refresh, open dashboard) and the GPU, kernel, task and log sections.
 * It follows the gateway only while visible.
 */
import { Dialog, showDialog, showErrorMessage } from '@jupyterlab/apputils';
import {
  launchIcon,
  LabIcon,
  refreshIcon,
  SidePanel,
  ToolbarButton
} from '@jupyterlab/ui-components';
import { Message } from '@lumino/messaging';
import { Panel, Widget } from '@lumino/widgets';

import { el, shortId } from './format';
import { KernelsModel } from './kernels';
import { LinkState, VrunGPUModel } from './model';
import { GpuSection, KernelSection, LogSection, TaskSection } from './sections';
import { IKernel } from './tokens';

export const PANEL_ID = 'vrungpu-panel';

const ICON_SVG =
  '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16" height="16">' +
  '<g class="jp-icon3" fill="#616161">' +
  '<path d="M3 6h14a2 2 0 0 1 2 2v8a2 2 0 0 1-2 2H3zm3 3v6h9V9z"/>' +
  '<path d="M20 9h2v2h-2zm0 4h2v2h-2zM6 19h2v3H6zm5 0h2v3h-2z"/>' +
  '</g></svg>';

export const vrungpuIcon = new LabIcon({ name: 'vrungpu-labext:icon', svgstr: ICON_SVG });

const LINK_LABELS: Record<LinkState, string> = {
  idle: 'paused',
  connecting: 'connecting',
  open: 'live',
  closed: 'polling'
};

/** Header: title, link indicator and the status line (errors show here). */
class StatusHeader extends Widget {
  constructor() {
    super();
    this.addClass('jp-VrunGPU-header');
    const title = el('div', 'jp-VrunGPU-titleRow');
    title.append(el('h2', 'jp-VrunGPU-title', 'VrunGPU'), this._link);
    this.node.append(title, this._status);
  }

  render(model: VrunGPUModel): void {
    const state = model.linkState;
    this._link.dataset.link = state;
    this._link.textContent = LINK_LABELS[state];
    const parts = [model.error ?? (model.loaded ? '' : 'Loading...')];
    if (state === 'closed' && model.linkProblem && !model.error) {
      const wait = model.reconnectInS;
      parts.push(`${model.linkProblem}; polling instead.`);
      if (wait !== null) {
        parts.push(`Reconnecting in ${wait} s.`);
      }
    }
    this._status.textContent = parts.filter(Boolean).join(' ');
    this._status.classList.toggle('jp-mod-error', model.error !== null);
  }

  private _link = el('span', 'jp-VrunGPU-linkState');
  private _status = el('div', 'jp-VrunGPU-status');
}

export class VrunGPUPanel extends SidePanel {
  constructor(
    readonly model: VrunGPUModel,
    readonly kernels: KernelsModel
  ) {
    super({ content: new Panel() });
    this.id = PANEL_ID;
    this.addClass('jp-VrunGPU-panel');
    this.title.icon = vrungpuIcon;
    this.title.caption = 'VrunGPU';
    this.node.dataset.state = 'loading';
    this.header.addWidget(this._status);
    this.toolbar.addItem(
      'refresh',
      new ToolbarButton({
        icon: refreshIcon,
        className: 'jp-VrunGPU-refresh',
        tooltip: 'Reload GPUs, kernels and tasks',
        onClick: () => void this.refresh()
      })
    );
    this.toolbar.addItem(
      'dashboard',
      new ToolbarButton({
        icon: launchIcon,
        label: 'Open dashboard',
        className: 'jp-VrunGPU-openDashboard',
        tooltip: "Open the gateway's web dashboard in a new tab",
        onClick: () => void this.openDashboard()
      })
    );
    const select = (taskId: string) => this.select(taskId);
    this._gpus = new GpuSection(model, select);
    this._kernelList = new KernelSection(kernels, kernel => void this._stopKernel(kernel));
    this._tasks = new TaskSection(model, select);
    this._log = new LogSection(
      model,
      taskId => this._cancel(taskId),
      () => this.select(null)
    );
    this.content.addClass('jp-VrunGPU-content');
    this.addWidget(this._gpus);
    this.addWidget(this._kernelList);
    this.addWidget(this._tasks);
    this.addWidget(this._log);
    model.changed.connect(this._render, this);
    kernels.changed.connect(this._render, this);
    this._render();
  }

  /** Reload GPUs, tasks and kernels. */
  async refresh(): Promise<void> {
    await Promise.all([this.model.refresh(), this.kernels.refresh()]);
  }

  /** Show a task's live log (null closes it). */
  select(taskId: string | null): void {
    this.model.subscribe(taskId);
    this._render();
  }

  async openDashboard(): Promise<void> {
    try {
      window.open(await this.model.dashboardURL(), '_blank', 'noopener');
    } catch (error) {
      void showErrorMessage('VrunGPU dashboard', (error as Error).message);
    }
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.model.changed.disconnect(this._render, this);
    this.kernels.changed.disconnect(this._render, this);
    this.model.stop();
    this.kernels.stop();
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this.model.start();
    this.kernels.start();
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    if (this.isVisible) {
      this.model.start();
      this.kernels.start();
    }
  }

  /** Stand by while hidden: no polling, no socket. */
  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this.model.stop();
    this.kernels.stop();
  }

  /** Ask, then stop the kernel; its GPUs show as free with the next GPU report. */
  private async _stopKernel(kernel: IKernel): Promise<void> {
    const what = kernel.session ? `session ${kernel.session}` : `kernel ${shortId(kernel.id)}`;
    const answer = await showDialog({
      title: `Stop ${what}?`,
      body: 'The kernel shuts down: its variables are lost and its GPUs go back to the pool.',
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Stop kernel' })]
    });
    if (!answer.button.accept) {
      return;
    }
    try {
      await this.kernels.stopKernel(kernel.id);
    } catch (error) {
      void showErrorMessage('VrunGPU: stop failed', (error as Error).message);
    }
  }

  private async _cancel(taskId: string): Promise<void> {
    try {
      await this.model.cancel(taskId);
    } catch (error) {
      void showErrorMessage('VrunGPU: cancel failed', (error as Error).message);
    }
  }

  private _render(): void {
    const model = this.model;
    this.node.dataset.state = model.error ? 'error' : model.loaded ? 'ok' : 'loading';
    this._status.render(model);
    this._gpus.render();
    this._kernelList.render();
    this._tasks.render();
    this._log.render();
  }

  private _status = new StatusHeader();
  private _gpus: GpuSection;
  private _kernelList: KernelSection;
  private _tasks: TaskSection;
  private _log: LogSection;
}

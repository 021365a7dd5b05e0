/**
 * JupyterLab plugin: the "VrunGPU" left sidebar and its commands.
 */
import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';

import { KernelsModel } from './kernels';
import { VrunGPUModel } from './model';
import { PANEL_ID, VrunGPUPanel } from './panel';

const PLUGIN_ID = 'vrungpu-labext:plugin';

namespace CommandIDs {
  export const open = 'vrungpu:open';
  export const refresh = 'vrungpu:refresh';
  export const dashboard = 'vrungpu:open-dashboard';
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'VrunGPU sidebar: GPUs, kernels, tasks with live progress and logs, cancel.',
  autoStart: true,
  optional: [ILayoutRestorer, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null
  ) => {
    const panel = new VrunGPUPanel(new VrunGPUModel(), new KernelsModel());
    app.shell.add(panel, 'left', { rank: 900 });
    restorer?.add(panel, PANEL_ID);

    app.commands.addCommand(CommandIDs.open, {
      label: 'Open the VrunGPU sidebar',
      execute: () => app.shell.activateById(PANEL_ID)
    });
    app.commands.addCommand(CommandIDs.refresh, {
      label: 'Reload VrunGPU GPUs, kernels and tasks',
      execute: () => panel.refresh()
    });
    app.commands.addCommand(CommandIDs.dashboard, {
      label: 'Open the VrunGPU dashboard',
      execute: () => panel.openDashboard()
    });
    for (const command of Object.values(CommandIDs)) {
      palette?.addItem({ command, category: 'VrunGPU' });
    }
  }
};

export default plugin;

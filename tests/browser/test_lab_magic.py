"""The ``%%vrungpu`` task panel (ipywidgets `TaskPanel`) in a real JupyterLab in Chromium.

The session's JupyterLab (``tests/browser/conftest.py``) starts its kernels (``python3``, this
venv's Python) with ``VRUNGPU_URL`` / ``VRUNGPU_TOKEN`` of a real gateway (``--gpus sim:2``) and
``VRUNGPU_WIDGETS=on``. A notebook written with nbformat is opened at ``/lab/tree/<name>``
and run with JupyterLab's own ``notebook:run-all-cells`` command (``window.jupyterapp``, exposed
by ``--LabApp.expose_app_in_browser`` as for Galata). The test reads the panel from the DOM
while the job runs: its progress bar's width, its log, its verdict; and asserts that the page
logged no console errors and threw no page errors. Screenshots: ``test-artifacts/lab-magic-*``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import nbformat
import pytest
import requests

from tests.support import GatewayProcess, wait_for

if TYPE_CHECKING:
    from tests.browser.conftest import JupyterProcess, WatchedPage

pytestmark = pytest.mark.browser

NOTEBOOK = "lab-magic.ipynb"
PANEL = ".jp-OutputArea .vrungpu-task-panel"
JOB_CELL = """\
%%vrungpu --timeout 120 --name lab-magic
import time
for i in range(1, 11):
    time.sleep(0.6)
    print(f"[PROGRESS:{i * 10}:step {i}]", flush=True)
"""

# Find the open notebook, wait for its kernel, and start "Run All Cells" without awaiting it
# (its promise settles when the last cell has run).
RUN_ALL = """async (path) => {
  const app = window.jupyterapp;
  await app.restored;
  const panel = [...app.shell.widgets('main')].find(w => w.context && w.context.path === path);
  if (!panel) return 'not open yet';
  app.shell.activateById(panel.id);
  await panel.context.ready;
  await panel.sessionContext.ready;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  if (!kernel) return 'no kernel yet';
  await kernel.info;
  void app.commands.execute('notebook:run-all-cells');
  return 'started';
}"""


@pytest.fixture
def notebook(lab: JupyterProcess) -> Iterator[str]:
    """The two-cell notebook in the lab's root; its kernel is shut down afterwards."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [
        nbformat.v4.new_code_cell("%load_ext vrungpu_magic"),
        nbformat.v4.new_code_cell(JOB_CELL),
    ]
    path = lab.root / NOTEBOOK
    nbformat.write(nb, path)
    yield NOTEBOOK
    for session in lab.get("api/sessions", headers=lab.auth).json():
        if session["path"] == NOTEBOOK:
            url = f"{lab.url}api/sessions/{session['id']}"
            requests.delete(url, headers=lab.auth, timeout=30).raise_for_status()
    path.unlink(missing_ok=True)


def bar_percent(panel: Any) -> float:
    """The drawn width of the panel's progress bar, in percent ("" before the first render)."""
    width = panel.locator(".widget-hprogress .progress-bar").evaluate("e => e.style.width")
    return float(width.rstrip("%") or 0)


@pytest.mark.timeout(120)
def test_magic_panel_renders_and_follows_the_job(
    notebook: str, lab: JupyterProcess, lab_gateway: GatewayProcess, watched_page: WatchedPage
) -> None:
    # (`notebook` first: its teardown, which shuts the kernel down, runs after the page closed)
    page = watched_page.page
    page.goto(f"{lab.url}lab/tree/{notebook}?reset&token={lab.token}")
    page.wait_for_selector("#jupyterlab-splash", state="detached", timeout=60_000)
    page.wait_for_function("() => window.jupyterapp !== undefined", timeout=30_000)
    wait_for(lambda: page.evaluate(RUN_ALL, notebook) == "started", 60, 0.2, "Run All Cells")

    panel = page.locator(PANEL)
    panel.wait_for(state="visible", timeout=30_000)
    seen: list[float] = []  # the bar's width, sampled every 0.1 s until the verdict shows

    def sample() -> float:
        seen.append(bar_percent(panel))
        return seen[-1]

    def finished() -> bool:
        sample()
        return "completed in" in panel.inner_text()  # the verdict line under the log

    wait_for(lambda: 0 < sample() < 100, 30, 0.1, "the bar to start moving")
    watched_page.shot("lab-magic-running.png")
    wait_for(finished, 60, 0.1, "the panel to show the task completed")

    moving = sorted({p for p in seen if 0 < p < 100})
    assert len(moving) >= 2, seen  # it advanced while the job ran, not only at the end
    assert seen == sorted(seen), seen
    wait_for(lambda: bar_percent(panel) == 100, 10, 0.1, "the bar at 100 %")
    bar = panel.locator(".widget-hprogress .progress-bar")
    assert "progress-bar-success" in (bar.get_attribute("class") or "")
    log = panel.locator("pre").inner_text()
    assert [f"[PROGRESS:{i * 10}:step {i}]" for i in range(1, 11)] == log.splitlines(), log
    task_id = panel.locator("code").first.inner_text()
    assert lab_gateway.api.task(task_id)["status"] == "completed"
    # The cell waited for the job: it has its execution count once the job is done.
    prompts = page.locator(".jp-CodeCell .jp-InputPrompt")
    wait_for(lambda: prompts.nth(1).inner_text().strip() == "[2]:", 15, 0.1, "cell 2 done")
    watched_page.shot("lab-magic-completed.png")
    watched_page.assert_no_errors()

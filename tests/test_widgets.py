"""The ipywidgets panels driven in-process (no browser) against a real gateway."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("ipywidgets")

from IPython.core.interactiveshell import InteractiveShell  # noqa: E402

from tests.support import TOKEN, Api, GatewayProcess, wait_for  # noqa: E402
from vrungpu_magic.client import VrunGPUClient  # noqa: E402
from vrungpu_magic.follow import TaskFollower  # noqa: E402
from vrungpu_magic.handle import TaskHandle  # noqa: E402
from vrungpu_magic.magic import VrunGPUMagics  # noqa: E402
from vrungpu_magic.widgets import STDERR_STYLE, GpuPanel, TaskPanel  # noqa: E402

STEPS_JOB = (
    "import sys, time\n"
    "for i in range(1, 11):\n"
    "    print(f'[PROGRESS:{i * 10}:step {i}/10]', flush=True)\n"
    "    print(f'line {i}', flush=True)\n"
    "    print(f'warn {i}', file=sys.stderr, flush=True)\n"
    "    time.sleep(0.4)\n"
)
LONG_JOB = (
    "import time\nfor i in range(300):\n    print('tick', i, flush=True)\n    time.sleep(0.1)\n"
)


@pytest.fixture(scope="module")
def gateway(module_gateway: GatewayProcess) -> GatewayProcess:
    """One gateway for this module's tests (each leaves no task running)."""
    return module_gateway


@pytest.fixture
def client(gateway: GatewayProcess) -> VrunGPUClient:
    return VrunGPUClient(gateway.url, TOKEN)


def follow(
    client: VrunGPUClient, task_id: str, log_lines: int = 50
) -> tuple[TaskPanel, TaskFollower]:
    """A panel following ``task_id`` in the background, wired as the magic wires it."""
    panel = TaskPanel(log_lines=log_lines)
    follower = TaskFollower(client, task_id, panel)
    panel.bind(task_id, on_cancel=lambda: follower.cancel_remote("Cancelled"))
    follower.start_background()
    return panel, follower


def test_panel_follows_progress_and_log_while_running(client: VrunGPUClient, api: Api) -> None:
    task_id = client.run_async(STEPS_JOB, name="panel-run")
    panel, _ = follow(client, task_id)
    assert task_id in panel.header.value
    seen_progress = wait_for(
        lambda: api.task(task_id)["status"] == "running" and 0 < panel.progress.value < 100,
        20,
        what="progress between 0 and 100 while running",
    )
    assert seen_progress
    first_log = wait_for(lambda: "line 2" in panel.log_text() and panel.log.value, 10)
    assert api.task(task_id)["status"] == "running"
    assert "running" in panel.header.value and "GPU" in panel.header.value
    assert "elapsed" in panel.caption.value and "step" in panel.caption.value
    wait_for(lambda: panel.finished, 30, what="the panel to finish")
    assert panel.log.value != first_log and "line 10" in panel.log.value
    assert panel.status == "completed" and panel.progress.value == 100
    assert panel.progress.bar_style == "success" and panel.cancel_button.disabled
    assert "completed in" in panel.footer.value and "return code 0" in panel.footer.value


def test_panel_keeps_the_last_lines_and_marks_stderr(client: VrunGPUClient) -> None:
    task_id = client.run_async(STEPS_JOB.replace("0.4", "0.01"))
    panel, _ = follow(client, task_id, log_lines=12)
    wait_for(lambda: panel.finished, 30)
    assert f'<span style="{STDERR_STYLE}">warn 10</span>' in panel.log.value
    assert "line 10" in panel.log.value and "<span" not in panel.log_text()
    panel_lines = panel.log_text().splitlines()
    assert len(panel_lines) == 12 and panel_lines[-1] in ("line 10", "warn 10")
    assert "line 1\n" not in panel.log_text() + "\n"  # the oldest lines are gone


def test_cancel_button_cancels_the_task(client: VrunGPUClient, api: Api) -> None:
    task_id = client.run_async(LONG_JOB)
    panel, _ = follow(client, task_id)
    wait_for(lambda: "tick 3" in panel.log_text(), 20, what="the job to print")
    panel.cancel_button.click()
    assert panel.cancel_button.disabled
    api.wait_status(task_id, "cancelled", timeout_s=20)
    wait_for(lambda: panel.finished, 20)
    assert panel.status == "cancelled" and "cancelled" in panel.footer.value


def test_panel_shows_the_upload_before_the_task() -> None:
    panel = TaskPanel()
    panel.show_upload(512, 2048)
    assert panel.progress.value == 25 and panel.caption.value == "uploading 512 B / 2.0 KB"
    panel.show_task({"task_id": "t1", "status": "queued", "progress": 0, "queue_position": 2})
    assert panel.progress.value == 0 and "queued (#2)" in panel.header.value


def test_gpu_panel_shows_bars_and_the_holding_task(client: VrunGPUClient, api: Api) -> None:
    task_id = client.run_async(LONG_JOB, gpu_id=1)
    api.wait_status(task_id, "running")
    panel = GpuPanel(lambda: (client.get_gpu_info(), client.get_gpu_pool()))
    rows = panel.rows.children
    assert len(rows) == 2 and "2 GPUs, 1 free" in panel.summary.value
    name, util, memory, owner = rows[1].children
    assert name.value.startswith("GPU 1") and task_id in owner.value
    assert util.max == 100 and memory.max > 0 and memory.description.startswith("mem")
    assert rows[0].children[3].value == "free"
    client.cancel(task_id)
    panel.refresh_button.click()
    assert panel.rows.children[1].children[3].value == "free"


# -- the magic with panels on ----------------------------------------------------------------------


@pytest.fixture
def magics(gateway: GatewayProcess) -> Iterator[VrunGPUMagics]:
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "vrungpu_magic")
    vm: VrunGPUMagics = shell.magics_manager.registry["VrunGPUMagics"]
    vm.url, vm.token, vm.widgets = gateway.url, TOKEN, "on"
    yield vm
    vm.url, vm.token, vm.widgets = "", "", "auto"


def test_magic_shows_a_panel(magics: VrunGPUMagics, capsys: Any) -> None:
    result = magics.shell.run_cell("%%vrungpu --out h\nprint('in the panel')\n")
    assert result.success, result.error_in_exec
    handle: TaskHandle = magics.shell.user_ns["h"]
    assert isinstance(handle.panel, TaskPanel) and handle.panel.status == "completed"
    assert "in the panel" in handle.panel.log_text()
    out = capsys.readouterr().out
    assert "VrunGPU task panel" in out and "in the panel" not in out  # the log is in the panel


def test_a_refused_submission_leaves_a_note_in_the_panel(magics: VrunGPUMagics) -> None:
    shown: list[TaskPanel] = []
    original = magics._view  # keep the panel the magic makes, to look at it afterwards
    magics._view = lambda: shown.append(original()) or shown[-1]  # type: ignore[method-assign]
    try:
        result = magics.shell.run_cell("%%vrungpu --gpu 9\nprint(1)\n")
    finally:
        del magics._view
    assert "HTTP 400" in str(result.error_in_exec)
    [panel] = shown
    assert panel.finished and panel.cancel_button.disabled
    assert "Not submitted" in panel.footer.value and "gpu" in panel.footer.value.lower()


def test_async_panel_keeps_updating_in_the_background(magics: VrunGPUMagics) -> None:
    result = magics.shell.run_cell(f"%%vrungpu --async\n{STEPS_JOB}")
    handle: TaskHandle = result.result
    panel: TaskPanel = handle.panel
    assert not panel.finished
    wait_for(lambda: "line 3" in panel.log_text(), 20, what="log lines in the async panel")
    assert handle.result(timeout=30)["status"] == "completed"
    wait_for(lambda: panel.finished, 10)
    assert panel.status == "completed" and "line 10" in panel.log_text()

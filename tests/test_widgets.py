"""The ipywidgets panels, made and wired by the magic itself, in process (no browser), against
a real gateway."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("ipywidgets")

from IPython.core.interactiveshell import InteractiveShell  # noqa: E402

from tests.support import TOKEN, Api, Gate, GatewayProcess, wait_for  # noqa: E402
from vrungpu_magic.handle import TaskHandle  # noqa: E402
from vrungpu_magic.magic import VrunGPUMagics  # noqa: E402
from vrungpu_magic.widgets import STDERR_STYLE, GpuPanel, TaskPanel  # noqa: E402

STEP = (
    "print(f'[PROGRESS:{i * 10}:step {i}/10]', flush=True)\n"
    "print(f'line {i}', flush=True)\n"
    "print(f'warn {i}', file=sys.stderr, flush=True)\n"
)
STEPS_JOB = "import sys\nfor i in range(1, 11):\n" + textwrap.indent(STEP, "    ")


def steps_job(gate: Gate) -> str:
    """Steps 1-5, then a wait on ``gate``, then steps 6-10."""
    body = textwrap.indent(STEP, "    ")
    steps = [f"for i in range({start}, {end}):\n" + body for start, end in ((1, 6), (6, 11))]
    return "import sys\n" + steps[0] + gate.code + steps[1]


@pytest.fixture(scope="module")
def gateway(module_gateway: GatewayProcess) -> GatewayProcess:
    """One gateway for this module's tests (each leaves no task running)."""
    return module_gateway


@pytest.fixture
def magics(gateway: GatewayProcess) -> Iterator[VrunGPUMagics]:
    """The magic, with panels on: every panel here is made and wired by the magic's code."""
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "vrungpu_magic")
    vm: VrunGPUMagics = shell.magics_manager.registry["VrunGPUMagics"]
    vm.url, vm.token, vm.widgets = gateway.url, TOKEN, "on"
    yield vm
    vm.url, vm.token, vm.widgets, vm.log_lines = "", "", "auto", 200


@pytest.fixture
def displayed(magics: VrunGPUMagics, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The objects the magic displays, as IPython's display formatter receives them."""
    shown: list[Any] = []
    formatter = magics.shell.display_formatter
    format_ = formatter.format

    def record(obj: Any, *args: Any, **kwargs: Any) -> Any:
        shown.append(obj)
        return format_(obj, *args, **kwargs)

    monkeypatch.setattr(formatter, "format", record)
    return shown


def run_async(magics: VrunGPUMagics, source: str) -> TaskHandle:
    """Run a cell that returns at once (``--async``); its handle, with the magic's panel."""
    result = magics.shell.run_cell(source)
    assert result.success, result.error_in_exec
    assert isinstance(result.result, TaskHandle) and isinstance(result.result.panel, TaskPanel)
    return result.result


def test_panel_follows_progress_and_log_while_running(
    magics: VrunGPUMagics, api: Api, gate: Gate
) -> None:
    handle = run_async(magics, f"%%vrungpu --async --name panel-run\n{steps_job(gate)}")
    panel: TaskPanel = handle.panel
    assert handle.task_id in panel.header.value
    wait_for(lambda: panel.progress.value == 50, 20, what="progress 50 in the panel")
    first_log = wait_for(lambda: "line 5" in panel.log_text() and panel.log.value, 10)
    assert api.task(handle.task_id)["status"] == "running" and not panel.finished
    assert "running" in panel.header.value and "GPU" in panel.header.value
    assert "elapsed" in panel.caption.value and "step 5/10" in panel.caption.value
    gate.open()
    wait_for(lambda: panel.finished, 30, what="the panel to finish")
    assert panel.log.value != first_log and "line 10" in panel.log.value
    assert panel.status == "completed" and panel.progress.value == 100
    assert panel.progress.bar_style == "success" and panel.cancel_button.disabled
    assert "completed in" in panel.footer.value and "return code 0" in panel.footer.value


def test_panel_keeps_the_last_lines_and_marks_stderr(magics: VrunGPUMagics) -> None:
    magics.shell.run_line_magic("config", "VrunGPUMagics.log_lines = 12")
    result = magics.shell.run_cell(f"%%vrungpu --out h\n{STEPS_JOB}")
    assert result.success, result.error_in_exec
    panel: TaskPanel = magics.shell.user_ns["h"].panel
    assert panel.finished and panel.status == "completed"
    assert f'<span style="{STDERR_STYLE}">warn 10</span>' in panel.log.value
    assert "line 10" in panel.log.value and "<span" not in panel.log_text()
    panel_lines = panel.log_text().splitlines()
    assert len(panel_lines) == 12 and panel_lines[-1] in ("line 10", "warn 10")
    assert "line 1\n" not in panel.log_text() + "\n"  # the oldest lines are gone


def test_cancel_button_cancels_the_task(magics: VrunGPUMagics, api: Api, gate: Gate) -> None:
    handle = run_async(magics, f"%%vrungpu --async\nprint('tick', flush=True)\n{gate.code}")
    panel: TaskPanel = handle.panel
    wait_for(lambda: "tick" in panel.log_text(), 20, what="the job to print")
    panel.cancel_button.click()
    assert panel.cancel_button.disabled
    api.wait_status(handle.task_id, "cancelled", timeout_s=20)
    wait_for(lambda: panel.finished, 20)
    assert panel.status == "cancelled" and "cancelled" in panel.footer.value


def test_attach_async_replays_the_log_into_a_live_panel(
    magics: VrunGPUMagics, api: Api, gate: Gate
) -> None:
    task_id = api.submit(steps_job(gate))
    wait_for(lambda: "line 5" in api.get(f"/task/{task_id}/logs").json()["content"], 20)
    panel: TaskPanel = run_async(magics, f"%vrungpu attach {task_id} --async").panel
    wait_for(lambda: "line 5" in panel.log_text(), 20, what="the log replayed")
    assert "line 1\n" in panel.log_text() and not panel.finished
    gate.open()
    wait_for(lambda: panel.finished, 30, what="the panel to finish")
    assert panel.status == "completed" and "line 10" in panel.log_text()


def test_panel_shows_the_upload_before_the_task() -> None:
    panel = TaskPanel()
    panel.show_upload(512, 2048)
    assert panel.progress.value == 25 and panel.caption.value == "uploading 512 B / 2.0 KB"
    panel.show_task({"task_id": "t1", "status": "queued", "progress": 0, "queue_position": 2})
    assert panel.progress.value == 0 and "queued (#2)" in panel.header.value


def test_gpus_command_shows_bars_and_the_holding_task(
    magics: VrunGPUMagics, displayed: list[Any], api: Api, gate: Gate
) -> None:
    task_id = api.submit(gate.code, gpu_id=1)
    api.wait_status(task_id, "running")
    magics.shell.run_line_magic("vrungpu", "gpus")
    [panel] = displayed
    assert isinstance(panel, GpuPanel)
    rows = panel.rows.children
    assert len(rows) == 2 and "2 GPUs, 1 free" in panel.summary.value
    name, util, memory, owner = rows[1].children
    assert name.value.startswith("GPU 1") and task_id in owner.value
    assert util.max == 100 and memory.max > 0 and memory.description.startswith("mem")
    assert rows[0].children[3].value == "free"
    gate.open()
    api.wait_status(task_id, "completed")
    panel.refresh_button.click()  # the magic's own fetch, again
    assert panel.rows.children[1].children[3].value == "free"


def test_magic_shows_a_panel(magics: VrunGPUMagics, displayed: list[Any], capsys: Any) -> None:
    result = magics.shell.run_cell("%%vrungpu --out h\nprint('in the panel')\n")
    assert result.success, result.error_in_exec
    handle: TaskHandle = magics.shell.user_ns["h"]
    assert displayed == [handle.panel] and handle.panel.status == "completed"
    assert "in the panel" in handle.panel.log_text()
    out = capsys.readouterr().out
    assert "VrunGPU task panel" in out and "in the panel" not in out  # the log is in the panel


def test_a_refused_submission_leaves_a_note_in_the_panel(
    magics: VrunGPUMagics, displayed: list[Any]
) -> None:
    result = magics.shell.run_cell("%%vrungpu --gpu 9\nprint(1)\n")
    assert "HTTP 400" in str(result.error_in_exec)
    [panel] = displayed
    assert isinstance(panel, TaskPanel) and panel.finished and panel.cancel_button.disabled
    assert "Not submitted" in panel.footer.value and "gpu" in panel.footer.value.lower()


def test_async_panel_keeps_updating_in_the_background(magics: VrunGPUMagics, gate: Gate) -> None:
    handle = run_async(magics, f"%%vrungpu --async\n{steps_job(gate)}")
    panel: TaskPanel = handle.panel
    wait_for(lambda: "line 3" in panel.log_text(), 20, what="log lines in the async panel")
    assert not panel.finished
    gate.open()
    assert handle.result(timeout=30)["status"] == "completed"
    wait_for(lambda: panel.finished, 10)
    assert panel.status == "completed" and "line 10" in panel.log_text()

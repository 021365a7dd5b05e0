"""The ipywidgets panels: `TaskPanel` (one task, live) and `GpuPanel` (the host's GPUs).

They only render: `vrungpu_magic.follow.TaskFollower` feeds a `TaskPanel` the task's events,
as it feeds the text fallback (`vrungpu_magic.render.TextTaskView`). Button callbacks run under
``Output.capture()`` so their errors show in the panel instead of the kernel log. Widgets can be
driven without a browser (tests call ``panel.cancel_button.click()``).
"""

from __future__ import annotations

import html
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import ipywidgets as w  # type: ignore[import-untyped]

from vrungpu_gateway.protocol import TaskStatus
from vrungpu_magic.render import (
    Task,
    clean_line,
    final_line,
    fmt_bytes,
    gpu_holders,
    placement,
    progress_caption,
    status_of,
)

BADGE_COLOURS = {
    TaskStatus.PENDING: "#757575",
    TaskStatus.QUEUED: "#ef6c00",
    TaskStatus.RUNNING: "#1565c0",
    TaskStatus.COMPLETED: "#2e7d32",
    TaskStatus.FAILED: "#c62828",
    TaskStatus.CANCELLED: "#616161",
}
BAR_STYLES = {TaskStatus.COMPLETED: "success", TaskStatus.FAILED: "danger"}
LOG_BOX = (
    "max-height:18em;overflow-y:auto;display:flex;flex-direction:column-reverse;"
    "font-family:var(--jp-code-font-family,monospace);font-size:12px;"
    "background:var(--jp-layout-color2,#f5f5f5);padding:4px 6px;border-radius:2px"
)
STDERR_STYLE = "color:var(--jp-error-color1,#c62828)"
TICK_S = 0.5
RENDER_S = 0.2


def badge(status: str | None) -> str:
    try:
        colour = BADGE_COLOURS[TaskStatus(status or "")]
    except ValueError:
        colour = "#757575"
    return (
        f'<span style="background:{colour};color:white;border-radius:8px;padding:1px 8px;'
        f'font-size:11px">{html.escape(status or "…")}</span>'
    )


def _with_text(widget: w.Widget, what: str) -> Any:
    """The widget's display bundle, with a text/plain that says what it is and how to get
    text instead (seen where no widget frontend renders it: nbconvert, GitHub)."""
    bundle = widget._repr_mimebundle_()
    if isinstance(bundle, dict):
        bundle["text/plain"] = (
            f"[{what}: needs a Jupyter widget frontend; "
            "%config VrunGPUMagics.widgets = 'off' (or VRUNGPU_WIDGETS=off) for text output]"
        )
    return bundle


class TaskPanel:
    """Task id, placement, status badge, progress bar + message/elapsed/ETA, live log (last
    ``log_lines`` lines, stderr in red), a Cancel button, and the verdict at the end."""

    def __init__(
        self,
        *,
        title: str = "VrunGPU",
        log_lines: int = 200,
        on_cancel: Callable[[], Any] | None = None,
    ) -> None:
        self.title = title
        self.task: Task | None = None
        self.task_id: str | None = None
        self.on_cancel = on_cancel
        self._lines: deque[tuple[str, str]] = deque(maxlen=log_lines)
        self._lock = threading.RLock()
        self._log_dirty = False
        self._rendered_at = 0.0
        self._ticker: threading.Thread | None = None
        self._done = threading.Event()
        self.header = w.HTML(self._header_html())
        self.progress = w.FloatProgress(
            value=0, min=0, max=100, bar_style="info", layout=w.Layout(width="50%")
        )
        self.caption = w.Label("")
        self.log = w.HTML(self._log_html())
        self.cancel_button = w.Button(
            description="Cancel", icon="stop", button_style="danger", tooltip="Cancel the task"
        )
        self.footer = w.HTML("")
        self.out = w.Output()
        self.cancel_button.on_click(self.out.capture()(self._cancel_clicked))
        self.widget = w.VBox(
            [
                self.header,
                w.HBox([self.progress, self.caption]),
                self.log,
                w.HBox([self.cancel_button, self.footer]),
                self.out,
            ]
        )
        self.widget.add_class("vrungpu-task-panel")  # a stable hook for styling and browser tests

    # -- display ---------------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return _with_text(self.widget, "VrunGPU task panel")

    def _header_html(self) -> str:
        task = self.task or {}
        parts = [f"<b>{html.escape(self.title)}</b>"]
        if self.task_id:
            parts.append(f"task <code>{html.escape(self.task_id)}</code>")
        if task.get("name"):
            parts.append(html.escape(str(task["name"])))
        if task:
            parts.append(html.escape(placement(task)))
        parts.append(badge(task.get("status") if task else None))
        return " · ".join(parts)

    def _log_html(self) -> str:
        rows = [
            f'<span style="{STDERR_STYLE}">{html.escape(text)}</span>'
            if stream == "stderr"
            else html.escape(text)
            for stream, text in self._lines
        ]
        body = "\n".join(rows) or '<span style="opacity:.6">(no output yet)</span>'
        return (
            f'<div style="{LOG_BOX}"><pre style="margin:0;white-space:pre-wrap">{body}</pre></div>'
        )

    # -- TaskView --------------------------------------------------------------------------------
    def bind(self, task_id: str, *, on_cancel: Callable[[], Any] | None = None) -> None:
        """The task this panel shows (once submitted) and what its Cancel button calls."""
        with self._lock:
            self.task_id = task_id
            self.on_cancel = on_cancel or self.on_cancel
            self.header.value = self._header_html()

    def show_upload(self, sent: int, total: int) -> None:
        with self._lock:
            self.progress.value = sent * 100 / max(total, 1)
            self.caption.value = f"uploading {fmt_bytes(sent)} / {fmt_bytes(total)}"

    def show_task(self, task: Task) -> None:
        with self._lock:
            self.task = task
            self.task_id = task.get("task_id", self.task_id)
            self.header.value = self._header_html()
            self.progress.value = float(task.get("progress") or 0)
            self.caption.value = progress_caption(task)
            if status_of(task) is TaskStatus.RUNNING:
                self._start_ticker()

    def add_output(self, stream: str, lines: Sequence[str]) -> None:
        with self._lock:
            self._lines.extend((stream, clean_line(line)) for line in lines)
            self._log_dirty = True
            # re-render at most every RENDER_S; the ticker flushes what is left
            if self._ticker is None or time.monotonic() - self._rendered_at >= RENDER_S:
                self._flush_log()

    def note(self, text: str) -> None:
        with self._lock:
            self.footer.value = html.escape(text)

    def finish(self, task: Task) -> None:
        with self._lock:
            self._done.set()
            self.show_task(task)
            self._flush_log()
            status = status_of(task)
            self.progress.bar_style = BAR_STYLES.get(status, "") if status else ""
            if status is TaskStatus.COMPLETED:
                self.progress.value = 100
            self.cancel_button.disabled = True
            colour = BADGE_COLOURS.get(status, "#757575") if status else "#757575"
            self.footer.value = (
                f'<span style="color:{colour}">{html.escape(final_line(task))}</span>'
            )

    def abandon(self, reason: str) -> None:
        """No task came of it (the submission failed): say so, disable Cancel."""
        with self._lock:
            self._done.set()
            self.cancel_button.disabled = True
            self.progress.bar_style = "danger"
            self.footer.value = f'<span style="{STDERR_STYLE}">{html.escape(reason)}</span>'

    # -- state for callers and tests -------------------------------------------------------------
    @property
    def status(self) -> str | None:
        return self.task.get("status") if self.task else None

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def log_text(self) -> str:
        with self._lock:
            return "\n".join(text for _, text in self._lines)

    # -- internals -------------------------------------------------------------------------------
    def _flush_log(self) -> None:
        if self._log_dirty:
            self._log_dirty = False
            self._rendered_at = time.monotonic()
            self.log.value = self._log_html()

    def _start_ticker(self) -> None:
        """Refresh elapsed/ETA and batch log renders once a second while the task runs."""
        if self._ticker is not None or self._done.is_set():
            return

        def tick() -> None:
            while not self._done.wait(TICK_S):
                with self._lock:
                    if self.task is not None and not self._done.is_set():
                        self.caption.value = progress_caption(self.task)
                        self._flush_log()

        self._ticker = threading.Thread(target=tick, daemon=True, name="vrungpu-panel-tick")
        self._ticker.start()

    def _cancel_clicked(self, _button: w.Button) -> None:
        if self.on_cancel is None or self._done.is_set():
            return
        self.cancel_button.disabled = True
        self.footer.value = "Cancelling…"
        self.on_cancel()


class GpuPanel:
    """One row per GPU: utilisation and memory bars and the task holding it; a Refresh button."""

    def __init__(self, fetch: Callable[[], tuple[dict[str, Any], dict[str, Any]]]) -> None:
        self.fetch = fetch
        self.rows = w.VBox([])
        self.summary = w.HTML("")
        self.refresh_button = w.Button(description="Refresh", icon="refresh")
        self.out = w.Output()
        self.refresh_button.on_click(self.out.capture()(lambda _b: self.refresh()))
        self.widget = w.VBox(
            [
                w.HTML("<b>VrunGPU</b> · GPUs"),
                self.rows,
                w.HBox([self.refresh_button, self.summary]),
                self.out,
            ]
        )
        self.refresh()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return _with_text(self.widget, "VrunGPU GPU panel")

    def refresh(self) -> None:
        info, pool = self.fetch()
        devices = info.get("devices") or []
        holders = gpu_holders(info, pool)
        self.rows.children = [self._row(dev, holders.get(dev["index"])) for dev in devices]
        free = len(pool.get("available_gpus") or [])
        self.summary.value = (
            f"{len(devices)} GPUs, {free} free" if devices else "No GPUs; tasks run on CPU slots"
        )

    @staticmethod
    def _row(dev: dict[str, Any], holder: str | None) -> w.HBox:
        util = float(dev.get("utilization_percent") or 0)
        total = float(dev.get("memory_total_mb") or 0) or 1.0
        used = float(dev.get("memory_used_mb") or 0)
        name = w.Label(
            f"GPU {dev['index']} · {dev.get('name', '?')}", layout=w.Layout(width="16em")
        )
        util_bar = w.FloatProgress(value=util, min=0, max=100, description=f"util {util:.0f}%")
        mem_bar = w.FloatProgress(
            value=used, min=0, max=total, description=f"mem {used / total:.0%}"
        )
        mem_bar.tooltip = f"{used:.0f} / {total:.0f} MB"
        owner = w.HTML(f"task <code>{html.escape(holder)}</code>" if holder else "free")
        return w.HBox([name, util_bar, mem_bar, owner])

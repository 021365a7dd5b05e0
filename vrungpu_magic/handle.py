"""The task handle a ``%%vrungpu --async`` cell returns, and the one-line task errors.

`TaskFailedError` is what a failed job raises in its cell: IPython shows its one line (via
``_render_traceback_``) instead of a traceback of our own code, and "Run all" stops there.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from vrungpu_gateway.protocol import TaskStatus
from vrungpu_magic.client import VrunGPUClient
from vrungpu_magic.render import final_line, is_terminal, status_of

Task = dict[str, Any]


class TaskFailedError(Exception):
    """The remote job failed (or was cancelled); ``task`` is its final JSON."""

    def __init__(self, task: Task) -> None:
        super().__init__(final_line(task))
        self.task = task
        self.task_id: str = task.get("task_id", "")

    def _render_traceback_(self) -> list[str]:
        return [
            f"{type(self).__name__}: {self}",
            f"(full log: %vrungpu logs {self.task_id})",
        ]


class TaskCancelledError(TaskFailedError):
    """The remote job was cancelled (Cancel button, another client, or the gateway)."""


class TaskInterrupted(KeyboardInterrupt):
    """The cell was interrupted and its remote task cancelled."""

    def _render_traceback_(self) -> list[str]:
        return [str(self)]


def raise_for_task(task: Task) -> Task:
    """Return a completed task; raise `TaskFailedError` / `TaskCancelledError` otherwise."""
    status = status_of(task)
    if status is TaskStatus.CANCELLED:
        raise TaskCancelledError(task)
    if status is TaskStatus.FAILED:
        raise TaskFailedError(task)
    return task


class TaskHandle:
    """A remote task: ``status``, ``result()``, ``logs()``, ``cancel()``, ``files()``,
    ``download(path)``. ``panel`` is its live widget panel when one is shown."""

    def __init__(self, client: VrunGPUClient, task_id: str, task: Task | None = None) -> None:
        self.client = client
        self.task_id = task_id
        self._task: Task = task or {"task_id": task_id, "status": TaskStatus.PENDING.value}
        self._lock = threading.Lock()
        self.panel: Any = None
        self.thread: threading.Thread | None = None

    def _remember(self, task: Task) -> None:
        with self._lock:
            self._task = task

    @property
    def task(self) -> Task:
        """The task's JSON, fetched now."""
        self._remember(self.client.get_task_status(self.task_id))
        return self._task

    @property
    def status(self) -> str:
        """``pending``, ``queued``, ``running``, ``completed``, ``failed`` or ``cancelled``."""
        return self.task["status"]

    @property
    def done(self) -> bool:
        return is_terminal(self._task) or is_terminal(self.task)

    def result(self, timeout: float | None = None) -> Task:
        """Wait for the end; return the task if it completed, else raise `TaskFailedError`."""
        task = self.client.wait_for_task(self.task_id, timeout=timeout, poll_interval=0.5)
        self._remember(task)
        if self.thread is not None:  # let the panel show the end before we return
            self.thread.join(timeout=10)
        return raise_for_task(task)

    def logs(self, stream: str = "all", *, tail: int | None = None) -> str:
        return self.client.logs(self.task_id, stream, tail=tail)

    def cancel(self) -> Task:
        self.client.cancel(self.task_id)
        return self.task

    def files(self) -> list[dict[str, Any]]:
        return self.client.files(self.task_id)

    def download(self, path: str, dest: str | os.PathLike[str] = ".") -> Path:
        """Download one file of the task's workspace (e.g. ``model.pt``)."""
        return self.client.download(self.task_id, path, dest)

    def __repr__(self) -> str:
        task = self._task
        progress = float(task.get("progress") or 0)
        message = f" {task['progress_message']!r}" if task.get("progress_message") else ""
        return f"<TaskHandle {self.task_id} {task.get('status')} {progress:.0f}%{message}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

"""A task followed in a terminal: its live log, a progress line, Ctrl-C, its exit code.

Job stdout goes to our stdout and job stderr to our stderr, so ``vrungpu run x.py > out.txt``
captures the job's output alone. Our own lines (status, progress, the verdict) go to stderr:
a progress line redrawn in place when stderr is a terminal, a line per change otherwise.

Events are read by a thread (`_Pump`) and applied here, in the main thread: Ctrl-C interrupts
only the wait for the next event, so the stream goes on without a gap while we ask whether to
cancel.
"""

from __future__ import annotations

import queue
import shutil
import sys
import threading
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from vrungpu_magic.client import VrunGPUClient, VrunGPUError
from vrungpu_magic.render import (
    final_line,
    fmt_bytes,
    is_terminal,
    placement,
    progress_caption,
    text_bar,
)

Task = dict[str, Any]
Event = dict[str, Any]
OnInterrupt = Literal["ask", "cancel", "stop"]
STREAMS = ("stdout", "stderr")
CLEAR_LINE = "\r\x1b[K"
WAKE_S = 0.25  # the main thread wakes this often while waiting for events


def exit_code_for(task: Task) -> int:
    """The job's return code; 130 when cancelled, 1 when it failed without one (timeout,
    spawn_error, lost) or with one a shell cannot carry."""
    status = task.get("status")
    if status == "cancelled":
        return 130
    code = task.get("return_code")
    if status == "completed" and not code:
        return 0
    if isinstance(code, int) and 0 < code < 256:
        return code
    if isinstance(code, int) and -128 < code < 0:  # killed by a signal: as a shell says it
        return 128 - code
    return 1


class TerminalView:
    """Shows one task on the terminal (see the module docstring)."""

    def __init__(
        self, *, tty: bool, show_status: bool = True, streams: Iterable[str] = STREAMS
    ) -> None:
        self.tty = tty
        self.show_status = show_status
        self.streams = set(streams)
        self._bar = ""  # the progress line on screen (tty only)
        self._shown: tuple[Any, ...] = ()

    def _err(self, text: str) -> None:
        sys.stderr.write(text)
        sys.stderr.flush()

    def clear(self) -> None:
        """Take the progress line off the screen (before other text is written)."""
        if self._bar:
            self._err(CLEAR_LINE)
            self._bar = ""

    def _draw(self, line: str) -> None:
        width = max(20, shutil.get_terminal_size().columns - 1)
        self._bar = line[:width]
        self._err(CLEAR_LINE + self._bar)

    def note(self, text: str) -> None:
        """One of our own lines, on stderr."""
        bar = self._bar
        self.clear()
        self._err(text + "\n")
        if bar:
            self._draw(bar)

    def upload(self, sent: int, total: int) -> None:
        if self.tty and self.show_status:
            fraction = sent / max(total, 1)
            self._draw(f"Uploading {fmt_bytes(total)} {text_bar(fraction)} {fraction:4.0%}")

    def task(self, task: Task) -> None:
        if not self.show_status or is_terminal(task):  # `finish` says how it ended
            return
        where = f"{task.get('status')} · {placement(task)}"
        if self.tty:  # the id was said when submitted: the line keeps to what changes
            progress = float(task.get("progress") or 0)
            bar = f"{text_bar(progress / 100)} {progress:3.0f}%"
            self._draw(f"{where} {bar} {progress_caption(task)}".rstrip())
            return
        head = f"Task {task.get('task_id')} {where}"
        # a line per change of place and per quarter of progress, not per progress message
        progress = float(task.get("progress") or 0)
        key = (task.get("status"), placement(task), int(progress // 25))
        if key != self._shown:
            self._shown = key
            caption = progress_caption(task) if progress else ""
            self.note(f"{head}" + (f" · {progress:.0f}% {caption}" if caption else ""))

    def output(self, stream: str, lines: Sequence[str]) -> None:
        if stream not in self.streams or not lines:
            return
        bar = self._bar
        self.clear()
        target = sys.stderr if stream == "stderr" else sys.stdout
        target.write("".join(line if line.endswith("\n") else line + "\n" for line in lines))
        target.flush()
        if bar:
            self._draw(bar)

    def text(self, stream: str, text: str) -> None:
        """Raw log text (``\\r`` kept), ended with a newline."""
        if text:
            self.output(stream, [text])

    def finish(self, task: Task) -> None:
        self.clear()
        if self.show_status:
            self._err(final_line(task) + "\n")


_END = object()


class _Pump(threading.Thread):
    """Reads a task's events (`VrunGPUClient.stream`) into a queue, with a client of its own."""

    def __init__(self, client: VrunGPUClient, task_id: str, offsets: dict[str, int]) -> None:
        super().__init__(daemon=True, name=f"vrungpu-{task_id}")
        self.client = client.clone()
        self.task_id = task_id
        self.offsets = offsets
        self.events: queue.Queue[Any] = queue.Queue()

    def run(self) -> None:
        try:
            events = self.client.stream(
                self.task_id, self.offsets["stdout"], stderr_offset=self.offsets["stderr"]
            )
            for event in events:
                self.events.put(event)
        except BaseException as exc:  # handed to the main thread, which reports it
            self.events.put(exc)
        finally:
            self.events.put(_END)

    def next(self) -> Any:
        while True:
            try:
                return self.events.get(timeout=WAKE_S)
            except queue.Empty:
                continue


class Follower:
    """Follows one task to its end. ``on_interrupt``: what Ctrl-C does: ``ask`` (once; a
    second Ctrl-C cancels), ``cancel`` at once, or ``stop`` following (the task runs on)."""

    def __init__(
        self,
        client: VrunGPUClient,
        task_id: str,
        view: TerminalView,
        *,
        on_interrupt: OnInterrupt,
        offsets: dict[str, int] | None = None,
    ) -> None:
        self.client = client
        self.task_id = task_id
        self.view = view
        self.on_interrupt = on_interrupt
        self.pump = _Pump(client, task_id, offsets or dict.fromkeys(STREAMS, 0))
        self.task: Task | None = None
        self.cancelling = False

    def run(self) -> Task:
        """Apply events until the task ends; its final JSON. KeyboardInterrupt escapes when
        Ctrl-C stops following (``stop``, or again while cancelling)."""
        self.pump.start()
        while True:
            try:
                return self._drain()
            except KeyboardInterrupt:
                if self.on_interrupt == "stop" or self.cancelling:
                    self.view.clear()
                    raise
                if self._confirm():
                    self._cancel()

    def _drain(self) -> Task:
        while (item := self.pump.next()) is not _END:
            if isinstance(item, VrunGPUError) and not item.status:
                raise VrunGPUError(
                    0,
                    f"{item.detail}; the task may still run: vrungpu logs -f {self.task_id}",
                    item.code,
                )
            if isinstance(item, BaseException):
                raise item
            self._apply(item)
        return self._finish()

    def _apply(self, event: Event) -> None:
        if event.get("type") == "task":
            self.task = event["task"]
            self.view.task(event["task"])
        elif event.get("type") == "output":
            self.view.output(event.get("stream", "stdout"), event.get("lines") or [])

    def _finish(self) -> Task:
        task = self.task
        if task is None or not is_terminal(task):  # the events ended before the final state
            task = self.client.get_task_status(self.task_id)
        self.view.finish(task)
        return task

    def _confirm(self) -> bool:
        """Whether this Ctrl-C cancels: asked once on a terminal, a second Ctrl-C cancels."""
        if self.on_interrupt == "cancel":
            return True
        self.on_interrupt = "cancel"  # asked once: the next Ctrl-C cancels without asking
        self.view.clear()
        sys.stderr.write(f"\nCancel task {self.task_id}? [y/N] ")
        sys.stderr.flush()
        try:
            answer = sys.stdin.readline()
        except KeyboardInterrupt:
            sys.stderr.write("\n")
            return True
        if answer.strip().lower() in ("y", "yes"):
            return True
        self.view.note(f"Still following task {self.task_id} (Ctrl-C again cancels it)")
        return False

    def _cancel(self) -> None:
        self.cancelling = True
        self.view.note(f"Cancelling task {self.task_id}…")
        try:
            self.client.cancel(self.task_id)
        except VrunGPUError as exc:
            if exc.status != 409:  # 409: it had ended already; its end is on its way
                raise

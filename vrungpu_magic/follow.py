"""Following one remote task: its live events applied to a view, and cancel on interrupt.

The view is anything with the `TaskView` methods: the ipywidgets `TaskPanel` or the plain-text
`TextTaskView`. One `TaskFollower` drives either, in three ways: blocking in the cell's thread
(KeyboardInterrupt cancels the task), awaited by an async cell (the kernel keeps serving widget
clicks; SIGINT arrives as CancelledError), or in a background thread (``--async``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from vrungpu_magic.client import VrunGPUClient, VrunGPUError
from vrungpu_magic.handle import TaskInterrupted
from vrungpu_magic.render import is_terminal

log = logging.getLogger(__name__)
Task = dict[str, Any]
Event = dict[str, Any]


class TaskView(Protocol):
    def bind(self, task_id: str, *, on_cancel: Callable[[], Any] | None = None) -> None: ...
    def show_upload(self, sent: int, total: int) -> None: ...
    def show_task(self, task: Task) -> None: ...
    def add_output(self, stream: str, lines: Sequence[str]) -> None: ...
    def note(self, text: str) -> None: ...
    def finish(self, task: Task) -> None: ...
    def abandon(self, reason: str) -> None: ...


class FollowLost(Exception):
    """The gateway stopped answering while we followed a task (the task may still run)."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


class TaskFollower:
    """Applies one task's events to a view and keeps the latest task JSON."""

    def __init__(
        self,
        client: VrunGPUClient,
        task_id: str,
        view: TaskView,
        *,
        on_task: Callable[[Task], None] | None = None,
    ) -> None:
        self.client = client
        # events are read with a client of their own, so a follower thread never shares
        # the caller's requests.Session with the cell or a button callback
        self.events_client = client.clone()
        self.task_id = task_id
        self.view = view
        self.task: Task | None = None
        self.on_task = on_task
        self.stopped = threading.Event()

    def events(self) -> Iterator[Event]:
        """The task's live events, its log replayed from the start (`VrunGPUClient.stream`)."""
        try:
            yield from self.events_client.stream(self.task_id)
        except VrunGPUError as exc:
            if exc.status:
                raise
            raise FollowLost(
                f"lost the gateway while following task {self.task_id}: {exc.detail}. "
                f"The task may still run there: %vrungpu attach {self.task_id}"
            ) from None

    def apply(self, event: Event) -> None:
        if event.get("type") == "task":
            self.task = event["task"]
            if self.on_task is not None:
                self.on_task(self.task)
            self.view.show_task(self.task)
        elif event.get("type") == "output" and event.get("lines"):
            self.view.add_output(event.get("stream", "stdout"), event["lines"])

    def finish(self) -> Task:
        """Show the final state (fetched again when the events ended before it)."""
        task = self.task
        if not is_terminal(task):
            task = self.client.get_task_status(self.task_id)
            if self.on_task is not None:
                self.on_task(task)
        self.task = task
        assert task is not None
        self.view.finish(task)
        return task

    def cancel_remote(self, reason: str) -> str:
        """Cancel the remote task (if still live); the line that says what happened."""
        self.stopped.set()
        try:
            self.client.cancel(self.task_id)
        except VrunGPUError as exc:
            if exc.status == 409:  # it had ended already
                return f"{reason}: task {self.task_id} had already ended"
            message = f"{reason}: could not cancel task {self.task_id}: {exc.detail}"
            self.view.note(message)
            return message
        return f"{reason}: cancelled task {self.task_id}"

    def interrupted(self) -> TaskInterrupted:
        """Cancel after an interrupt; the exception to raise in the cell."""
        message = self.cancel_remote("Interrupted")
        with contextlib.suppress(VrunGPUError, KeyboardInterrupt):
            self.finish()
        return TaskInterrupted(message)

    def run(self) -> Task:
        """Follow until the task ends, in this thread; Ctrl-C / interrupt cancels the task."""
        try:
            for event in self.events():
                self.apply(event)
                if self.stopped.is_set():
                    break
        except KeyboardInterrupt:
            raise self.interrupted() from None
        return self.finish()

    async def run_async(self) -> Task:
        """Follow while awaited: events are read in a thread, applied on the event loop."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        thread = threading.Thread(
            target=self._pump, args=(loop, queue), daemon=True, name=f"vrungpu-{self.task_id}"
        )
        thread.start()
        try:
            while (item := await _next(queue)) is not _END:
                if isinstance(item, BaseException):
                    raise item
                self.apply(item)
        except (asyncio.CancelledError, KeyboardInterrupt):
            # ipykernel turns SIGINT into cancelling an async cell; we answer it as a sync
            # cell would, with a KeyboardInterrupt (the cell is marked interrupted)
            raise self.interrupted() from None
        return self.finish()

    def _pump(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]) -> None:
        def put(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop has closed: nobody is listening any more
                self.stopped.set()

        try:
            for event in self.events():
                if self.stopped.is_set():
                    break
                put(event)
        except Exception as exc:
            put(exc)
        finally:
            put(_END)

    def start_background(self) -> threading.Thread:
        """Follow in a daemon thread (``--async``); errors end up in the view as a note."""

        def target() -> None:
            try:
                self.run()
            except Exception as exc:
                log.debug("following %s stopped: %s", self.task_id, exc)
                self.view.note(f"Stopped following task {self.task_id}: {exc}")

        thread = threading.Thread(target=target, daemon=True, name=f"vrungpu-{self.task_id}")
        thread.start()
        return thread


_END = object()
WAKE_S = 0.25


async def _next(queue: asyncio.Queue[Any]) -> Any:
    """The queue's next item, waking the loop every WAKE_S meanwhile: ipykernel hands SIGINT
    to an awaited cell only when its event loop wakes up (ipython/ipykernel#881)."""
    while True:
        try:
            return await asyncio.wait_for(queue.get(), WAKE_S)
        except TimeoutError:
            continue

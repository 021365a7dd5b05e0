"""One WebSocket client's stream: a bounded outbox, task subscriptions with replay, and gaps.

No tornado here: the WebSocket handler passes the client's messages to ``Client.handle`` and
writes whatever ``Client.next_messages`` returns; ``StreamHub`` (``stream_hub.py``) routes bus
events to every ``Client``. The rules (see docs/streaming.md):

- Output is budgeted per client (``OUTBOX_BYTES``). A job never waits for a client: when the
  budget is spent, the client gets a ``gap`` for that task and stream and its lines are
  dropped; a subscription then pauses (both streams) until the client subscribes again.
- ``task_update`` and ``gpu_update`` are coalesced (one queued per task, one for the GPUs), so
  a stalled client holds a bounded number of them too.
- A subscription replays its task's log files from the asked offsets, paced by the outbox,
  then switches to live lines. The switch happens in one synchronous step on the event loop:
  the output stream writes a chunk to the file before it publishes that chunk's lines (in the
  same callback), or the job's shim wrote it before the gateway read it back, so the file read
  at the switch holds every line published so far; live lines at or before the replayed
  offset are skipped. ``split_lines`` cuts replay and live output
  at the same offsets, so nothing is lost or doubled at the seam.
- For a subscribed task, the terminal ``task_update`` is sent after all of its output.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vrungpu_gateway.engine import logs as logfiles
from vrungpu_gateway.engine.users import User
from vrungpu_gateway.errors import NotFound
from vrungpu_gateway.protocol import STREAMS, TaskStatus

log = logging.getLogger(__name__)

Message = dict[str, Any]

OUTBOX_BYTES = 4 * 1024 * 1024  # output a client may have queued (text + per-line overhead)
RESUME_BYTES = OUTBOX_BYTES // 2  # below this, replay reads on and a paused firehose resumes
LINE_COST = 64  # bytes counted per batched line on top of its text (list slot, str header)
EVENT_COST = 400  # bytes counted per firehose line on top of its text (a message of its own)
BATCH_LINES = 5000  # most lines in one task_output message
BATCH_BYTES = 256 * 1024  # most cost in one task_output message
WRITE_GROUP_BYTES = 512 * 1024  # handed to the socket at once, then awaited
CONTROL_COST = 512  # what a control message counts for in a write group
BATCH_WINDOW_S = 0.005  # a batch still growing is sent once it is this old
REPLAY_CHUNK = 256 * 1024  # bytes read from a log file per replay step (off the event loop)
SEAM_BYTES = 256 * 1024  # at most this much is read on the event loop at the switch to live
MAX_CONTROL = 10_000  # queued non-output messages before a client counts as overrun


@dataclass
class _Batch:
    task_id: str
    stream: str
    lines: list[str]
    offset: int
    cost: int
    born: float = field(default_factory=time.monotonic)

    def message(self) -> Message:
        return {
            "type": "task_output",
            "task_id": self.task_id,
            "stream": self.stream,
            "lines": self.lines,
            "offset": self.offset,
        }


@dataclass
class _Slot:
    """A queued message a newer one of its kind may replace (None: replaced, skip it)."""

    message: Message | None


@dataclass
class _StreamState:
    covered: int  # the client has (or has queued) every line ending at or before this offset
    live: bool = False  # False while the log file is being replayed


@dataclass
class _Subscription:
    task_id: str
    streams: dict[str, _StreamState]
    start_task: Message
    held: Message | None = None  # a terminal task_update waiting for the replay to end
    replay: asyncio.Task[None] | None = None
    paused: bool = False  # after a gap: no more output until the client subscribes again

    @property
    def live(self) -> bool:
        return all(state.live for state in self.streams.values())


@dataclass
class ClientContext:
    """What a client needs from the gateway (the hub provides it)."""

    logs_dir: Path
    # task summary JSON; raises NotFound, also when the user may not see the task
    describe: Callable[[str, User | None], Awaitable[Message]]
    is_running: Callable[[str], bool]  # the task's output may still grow
    changed: Callable[[], None]  # what some client `wants` changed: the hub re-routes


def is_terminal(task: Message) -> bool:
    return TaskStatus(task["status"]).is_terminal()


@dataclass(eq=False)  # compared by identity (the hub looks clients up in its tuple)
class Client:
    ctx: ClientContext
    on_overrun: Callable[[], None] | None = None  # the client stopped reading long ago
    user: User | None = None  # who connected: sees only what it owns (None: everything)
    subscriptions: dict[str, _Subscription] = field(default_factory=dict)
    closed: bool = False
    _outbox: deque[Any] = field(default_factory=deque)
    _cost: int = 0
    _controls: int = 0
    _started: bool = False
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _room: asyncio.Event = field(default_factory=asyncio.Event)
    _updates: dict[str, _Slot] = field(default_factory=dict)
    _gpu: _Slot | None = None
    _fire_offsets: dict[tuple[str, str], int] = field(default_factory=dict)
    _fire_paused: set[tuple[str, str]] = field(default_factory=set)

    def sees(self, owner: str | None) -> bool:
        """Whether what ``owner`` owns reaches this client (output, updates, deletions)."""
        return self.user is None or self.user.owns(owner)

    # -- the writer's side ------------------------------------------------------------------
    def start(self, init: Message) -> None:
        """Queue ``init`` ahead of everything that arrived while it was being built."""
        if self.closed:
            return
        self._outbox.appendleft(init)
        self._controls += 1
        self._started = True
        self._wake.set()

    async def next_messages(self) -> list[Message]:
        """Wait for queued messages and take about ``WRITE_GROUP_BYTES`` of them (at least one);
        [] once the client is closed. Taken messages leave the budget: the writer awaits them."""
        while True:
            while not (self._started and self._outbox):
                if self.closed:
                    return []
                self._wake.clear()
                await self._wake.wait()
            head = self._outbox[0]
            if isinstance(head, _Batch) and head is self._outbox[-1]:
                wait_s = head.born + BATCH_WINDOW_S - time.monotonic()
                if wait_s > 0:  # let a batch that is still growing gather a few more lines
                    await asyncio.sleep(wait_s)
                    continue
            out: list[Message] = []
            taken = 0
            while self._outbox and taken < WRITE_GROUP_BYTES:
                before = self._cost
                message = self._take(self._outbox.popleft())
                taken += (before - self._cost) or CONTROL_COST
                if message is not None:
                    out.append(message)
            if out:
                return out

    def _take(self, entry: Any) -> Message | None:
        if isinstance(entry, _Batch):
            self._spend(-entry.cost)
            return entry.message()
        if isinstance(entry, _Slot):
            self._controls -= 1
            if entry is self._gpu:
                self._gpu = None
            elif entry.message is not None:  # the live slot of its task (tombstones are None)
                self._updates.pop(entry.message["task"]["task_id"], None)
            return entry.message
        if entry["type"] == "task_output":  # a firehose line
            self._spend(-(len(entry["line"]) + EVENT_COST))
        else:
            self._controls -= 1
        return entry

    def _spend(self, cost: int) -> None:
        self._cost += cost
        if self._cost <= RESUME_BYTES:
            self._room.set()
            if self._fire_paused:  # drained: the firehose flows again
                self._fire_paused.clear()
                self.ctx.changed()
        else:
            self._room.clear()

    def _push(self, entry: Any) -> None:
        if self.closed:  # overrun: waiting for the handler to finish closing
            return
        self._outbox.append(entry)
        self._wake.set()

    def push_control(self, message: Message | _Slot) -> None:
        self._controls += 1
        self._push(message)
        if self._controls > MAX_CONTROL and not self.closed:
            log.warning("websocket client overrun: %s messages unread; closing it", self._controls)
            self.close()
            if self.on_overrun is not None:
                self.on_overrun()

    def close(self) -> None:
        self.closed = True
        self.ctx.changed()
        for sub in self.subscriptions.values():
            if sub.replay is not None:
                sub.replay.cancel()
        self.subscriptions.clear()
        self._outbox.clear()
        self._wake.set()

    @property
    def backlogged(self) -> asyncio.Event | None:
        """Its room event while it is past its resume mark yet still takes live output (a
        subscription not paused by a gap, or a firehose that has not gapped): producers wait
        a little for it (``EventBus.room``). None otherwise."""
        if self.closed or self._cost <= RESUME_BYTES:
            return None
        if self.subscriptions:
            taking = any(s.live and not s.paused for s in self.subscriptions.values())
        else:
            taking = not self._fire_paused
        return self._room if taking else None

    # -- events from the bus ------------------------------------------------------------------
    def wants(self, task_id: str, stream: str) -> bool:
        """Whether live lines of this task and stream may be queued now (the hub routes by it;
        whenever the answer may change, ``ctx.changed()`` is called)."""
        if self.closed:
            return False
        if not self.subscriptions:
            return (task_id, stream) not in self._fire_paused
        sub = self.subscriptions.get(task_id)
        return sub is not None and not sub.paused and sub.streams[stream].live

    def on_output(self, event: Message) -> None:
        """One chunk of a task's output: ``event["lines"]`` holds its ``Line``s in order."""
        task_id, stream = event["task_id"], event["stream"]
        if not self.subscriptions:
            for line in event["lines"]:
                if not self._firehose(task_id, stream, line.text, line.offset):
                    return
            return
        sub = self.subscriptions.get(task_id)
        if sub is None:
            return
        state = sub.streams[stream]
        for line in event["lines"]:
            if not state.live or sub.paused:
                return
            if line.offset > state.covered:
                self._live_line(sub, stream, state, line.text, line.offset)

    def _live_line(
        self, sub: _Subscription, stream: str, state: _StreamState, text: str, offset: int
    ) -> None:
        if self._cost + len(text) + LINE_COST <= OUTBOX_BYTES:
            self._append(sub.task_id, stream, state, text, offset)
            return
        sub.paused = True  # both streams: after the gap nothing more of this task's output
        self.ctx.changed()
        offsets = {name: st.covered for name, st in sub.streams.items()}
        self.push_control(
            {
                "type": "gap",
                "task_id": sub.task_id,
                "stream": stream,
                "offset": state.covered,
                "offsets": offsets,
            }
        )

    def _append(
        self, task_id: str, stream: str, state: _StreamState, text: str, offset: int
    ) -> None:
        cost = len(text) + LINE_COST
        tail = self._outbox[-1] if self._outbox else None
        if (
            isinstance(tail, _Batch)
            and tail.task_id == task_id
            and tail.stream == stream
            and len(tail.lines) < BATCH_LINES
            and tail.cost < BATCH_BYTES
        ):
            tail.lines.append(text)
            tail.offset = offset
            tail.cost += cost
        else:
            self._push(_Batch(task_id, stream, [text], offset, cost))
        state.covered = offset
        self._spend(cost)

    def _firehose(self, task_id: str, stream: str, text: str, offset: int) -> bool:
        """Queue one line as the seed's single-line message; False once paused."""
        key = (task_id, stream)
        if key in self._fire_paused:
            if self._cost > RESUME_BYTES:
                return False
            self._fire_paused.discard(key)
        cost = len(text) + EVENT_COST
        if self._cost + cost > OUTBOX_BYTES:
            self._fire_paused.add(key)
            self.ctx.changed()
            gap_at = self._fire_offsets.get(key, 0)
            self.push_control(
                {"type": "gap", "task_id": task_id, "stream": stream, "offset": gap_at}
            )
            return False
        self._fire_offsets[key] = offset
        self._push(
            {
                "type": "task_output",
                "task_id": task_id,
                "stream": stream,
                "line": text,
                "offset": offset,
            }
        )
        self._spend(cost)
        return True

    def on_task_update(self, event: Message) -> None:
        task = event["task"]
        task_id = task["task_id"]
        terminal = is_terminal(task)
        sub = self.subscriptions.get(task_id)
        if terminal and sub is not None and not sub.paused:
            if not sub.live:
                sub.held = event  # sent once the replay has delivered everything
                return
            self._read_to_end(sub)
        if terminal:
            self._forget_firehose(task_id)
        self._push_update(task_id, event, terminal=terminal)

    def _push_update(self, task_id: str, event: Message, *, terminal: bool) -> None:
        slot = self._updates.get(task_id)
        if slot is not None and not terminal:
            slot.message = event  # progress: replace in place
            return
        if slot is not None:  # a terminal update goes last, after the task's output
            slot.message = None
        slot = _Slot(event)
        self._updates[task_id] = slot
        self.push_control(slot)

    def on_gpu_update(self, event: Message) -> None:
        if self._gpu is not None:
            self._gpu.message = event
            return
        self._gpu = _Slot(event)
        self.push_control(self._gpu)

    def on_task_deleted(self, event: Message) -> None:
        self._drop(event["task_id"])
        self._forget_firehose(event["task_id"])
        self.push_control(event)

    def _forget_firehose(self, task_id: str) -> None:
        for stream in STREAMS:
            self._fire_offsets.pop((task_id, stream), None)
            if (task_id, stream) in self._fire_paused:
                self._fire_paused.discard((task_id, stream))
                self.ctx.changed()

    # -- the client's messages ---------------------------------------------------------------
    async def handle(self, message: Message) -> None:
        kind = message.get("type")
        task_id = message.get("task_id")
        if kind not in ("subscribe", "unsubscribe"):
            self.error("bad_message", f"unknown message type {kind!r}")
        elif not isinstance(task_id, str) or not task_id:
            self.error("bad_message", f"{kind} needs a task_id")
        elif kind == "unsubscribe":
            self._drop(task_id)
            self.push_control({"type": "unsubscribed", "task_id": task_id})
        else:
            offsets = _offsets(message)
            if isinstance(offsets, str):
                self.error("bad_message", offsets, task_id=task_id)
            else:
                await self.subscribe(task_id, offsets)

    def error(self, code: str, detail: str, **extra: Any) -> None:
        self.push_control({"type": "error", "code": code, "detail": detail, **extra})

    async def subscribe(self, task_id: str, offsets: dict[str, int]) -> None:
        """Replay ``task_id``'s output from ``offsets``, then follow it live."""
        try:
            task = await self.ctx.describe(task_id, self.user)
        except NotFound as exc:
            self.error(exc.code, exc.detail, task_id=task_id)
            return
        if self.closed:
            return
        self._drop(task_id)
        sizes = {s: logfiles.log_size(self.ctx.logs_dir, task_id, s) for s in STREAMS}
        states = {s: _StreamState(covered=min(offsets[s], sizes[s])) for s in STREAMS}
        sub = _Subscription(task_id, states, start_task=task)
        self.subscriptions[task_id] = sub
        self.ctx.changed()
        self.push_control(
            {
                "type": "subscribed",
                "task_id": task_id,
                "offsets": {s: st.covered for s, st in states.items()},
                "task": task,
            }
        )
        sub.replay = asyncio.create_task(self._replay(sub))

    def _drop(self, task_id: str) -> None:
        sub = self.subscriptions.pop(task_id, None)
        if sub is not None:
            self.ctx.changed()
            if sub.replay is not None:
                sub.replay.cancel()

    # -- replay ------------------------------------------------------------------------------
    async def _replay(self, sub: _Subscription) -> None:
        states = list(sub.streams.items())
        try:
            while True:
                for stream, state in states:
                    await self._replay_file(sub.task_id, stream, state)
                if all(self._behind(sub.task_id, s, st) <= SEAM_BYTES for s, st in states):
                    break
            self._go_live(sub)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken file must not kill the connection
            log.exception("task %s: replay failed", sub.task_id)
            self.error("replay_failed", f"could not replay the log: {exc}", task_id=sub.task_id)

    def _behind(self, task_id: str, stream: str, state: _StreamState) -> int:
        return logfiles.log_size(self.ctx.logs_dir, task_id, stream) - state.covered

    async def _replay_file(self, task_id: str, stream: str, state: _StreamState) -> None:
        while self._behind(task_id, stream, state) > SEAM_BYTES:
            while self._cost > RESUME_BYTES:
                await self._room.wait()
            data, _ = await asyncio.to_thread(
                logfiles.read_log,
                self.ctx.logs_dir,
                task_id,
                stream,
                offset=state.covered,
                limit_bytes=REPLAY_CHUNK,
            )
            self._append_raw(task_id, stream, state, data, final=False)

    def _append_raw(
        self, task_id: str, stream: str, state: _StreamState, data: bytes, *, final: bool
    ) -> None:
        base = state.covered
        raws, _ = logfiles.split_lines(data, final=final)
        for raw, end in raws:
            self._append(task_id, stream, state, logfiles.line_text(raw), base + end)

    def _go_live(self, sub: _Subscription) -> None:
        """The seam: read what is left and switch to live lines, with no await in between."""
        running = self.ctx.is_running(sub.task_id)
        for stream, state in sub.streams.items():
            self._read_rest(sub.task_id, stream, state, final=not running)
            state.live = True
        self.ctx.changed()
        if running:
            return
        update = sub.held
        sub.held = None
        if update is None and is_terminal(sub.start_task):
            update = {"type": "task_update", "task": sub.start_task}
        if update is not None:
            self._push_update(sub.task_id, update, terminal=True)
        else:  # it ended after describe() but before we subscribed to its updates
            asyncio.ensure_future(self._send_final(sub))

    def _read_rest(self, task_id: str, stream: str, state: _StreamState, *, final: bool) -> None:
        data, _ = logfiles.read_log(self.ctx.logs_dir, task_id, stream, offset=state.covered)
        self._append_raw(task_id, stream, state, data, final=final)

    def _read_to_end(self, sub: _Subscription) -> None:
        """On a terminal update: the last unterminated line, if the seam came too early for it."""
        for stream, state in sub.streams.items():
            if self._behind(sub.task_id, stream, state) > 0:
                self._read_rest(sub.task_id, stream, state, final=True)

    async def _send_final(self, sub: _Subscription) -> None:
        try:
            task = await self.ctx.describe(sub.task_id, self.user)
        except NotFound:
            return
        if self.subscriptions.get(sub.task_id) is sub:
            self._push_update(sub.task_id, {"type": "task_update", "task": task}, terminal=True)


def _offsets(message: Message) -> dict[str, int] | str:
    """The start offsets of a subscribe: ``offsets.stdout``, else ``offset``, else 0;
    ``offsets.stderr``, else 0. A string is the problem with the message."""
    given = message.get("offsets") or {}
    if not isinstance(given, dict) or set(given) - set(STREAMS):
        return 'offsets must be an object like {"stdout": 0, "stderr": 0}'
    out = {
        "stdout": given.get("stdout", message.get("offset", 0)),
        "stderr": given.get("stderr", 0),
    }
    for stream, value in out.items():
        if value is None:
            out[stream] = 0
        elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"the {stream} offset must be an integer >= 0, got {value!r}"
    return out

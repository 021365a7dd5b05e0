"""The gateway's side of one kernel's ZeroMQ channels, and their Jupyter JSON form.

``KernelWire`` follows the kernel's iopub channel once for every client (execution state,
last activity, and each message fanned out to the connected WebSockets) and answers the
gateway's own requests (readiness, the silent execute that claims a prespawned kernel,
shutdown). ``Bridge`` gives one client its own shell/control/stdin sockets, one identity for
all three as jupyter_client does, so replies and ``input_request`` come back to it alone.

jupyter_client does the protocol: connection files, sockets (``connect_shell`` & co. of a
client that has loaded the connection file), signing and (de)serialising (``Session``).
``to_client``/``from_client`` are the WebSocket's form of a message, as jupyter_server writes
it: JSON text with ``channel`` set and ISO dates, or, for a message with binary buffers,
jupyter_server's legacy binary framing (offsets, JSON, buffers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

import zmq
import zmq.asyncio
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.jsonutil import json_default

from vrungpu_gateway.records import utcnow

log = logging.getLogger(__name__)

CLIENT_CHANNELS = ("shell", "control", "stdin")
MAX_BUSY_PARENTS = 1000  # requests seen busy and not yet idle; more means idle ones were lost

Message = dict[str, Any]
OnMessage = Callable[[str, Message], None]  # (channel, message)
Send = Callable[[str | bytes], None]  # a WebSocket's write


class BadMessage(ValueError):
    """A client message that cannot be forwarded; the text says why."""


class KernelGone(RuntimeError):
    """The kernel process exited before it answered."""


def to_client(channel: str, msg: Message) -> str | bytes:
    """A kernel message as jupyter_server sends it over a WebSocket."""
    out = {key: value for key, value in msg.items() if key != "buffers"}
    out["channel"] = channel
    buffers = [bytes(b) for b in msg.get("buffers") or []]
    if not buffers:
        out["buffers"] = []
        return json.dumps(out, default=json_default, ensure_ascii=False)
    parts = [json.dumps(out, default=json_default).encode(), *buffers]
    offsets = [4 * (len(parts) + 1)]
    for part in parts[:-1]:
        offsets.append(offsets[-1] + len(part))
    return struct.pack(f"!{len(parts) + 1}I", len(parts), *offsets) + b"".join(parts)


def from_client(raw: str | bytes) -> tuple[str, Message]:
    """(channel, message) of a WebSocket message; BadMessage when it is not one."""
    msg = _binary_message(raw) if isinstance(raw, bytes) else _json_object(raw)
    channel = msg.pop("channel", None) or "shell"  # jupyter_server's default too
    if channel not in CLIENT_CHANNELS:
        raise BadMessage(f"no channel {channel!r} (one of {', '.join(CLIENT_CHANNELS)})")
    header = msg.get("header")
    if not isinstance(header, dict) or not isinstance(header.get("msg_type"), str):
        raise BadMessage("a message needs a header with a msg_type")
    if not header.get("msg_id"):
        raise BadMessage("a message needs header.msg_id")
    for key in ("parent_header", "metadata", "content"):
        if msg.setdefault(key, {}) is None:
            msg[key] = {}
        if not isinstance(msg[key], dict):
            raise BadMessage(f"{key} must be an object")
    return channel, msg


def _json_object(raw: str) -> Message:
    try:
        msg = json.loads(raw)
    except ValueError as exc:
        raise BadMessage(f"not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise BadMessage("a message must be a JSON object")
    msg["buffers"] = []
    return msg


def _binary_message(raw: bytes) -> Message:
    try:
        count = struct.unpack("!I", raw[:4])[0]
        offsets = [*struct.unpack(f"!{count}I", raw[4 : 4 * (count + 1)]), len(raw)]
        parts = [raw[start:stop] for start, stop in zip(offsets, offsets[1:], strict=False)]
        msg = json.loads(parts[0])
    except (struct.error, ValueError, IndexError) as exc:
        raise BadMessage(f"not a binary kernel message: {exc}") from None
    if not isinstance(msg, dict):
        raise BadMessage("a message must be a JSON object")
    msg["buffers"] = parts[1:]
    return msg


class KernelWire:
    """The gateway's connection to one kernel (see the module docstring)."""

    def __init__(self, *, kernel_id: str, connection_file: str) -> None:
        self.kernel_id = kernel_id
        self.client = AsyncKernelClient(context=zmq.asyncio.Context.instance())
        self.client.load_connection_file(connection_file)
        self.session = self.client.session
        self.execution_state = "starting"
        self.last_activity: datetime = utcnow()
        self.listeners: set[Send] = set()
        self._busy: set[str] = set()  # parent msg_ids between their busy and idle status
        self._iopub_seen = asyncio.Event()
        self._pending: dict[str, asyncio.Future[Message]] = {}
        self._iopub: asyncio.Task[None] | None = None
        self._own: Bridge | None = None

    def start(self) -> None:
        iopub = cast(zmq.asyncio.Socket, self.client.connect_iopub())
        self._iopub = asyncio.create_task(self._follow_iopub(iopub))
        self._own = Bridge(self, self._on_own_reply)

    async def close(self) -> None:
        if self._own is not None:
            await self._own.close()
        if self._iopub is not None:
            self._iopub.cancel()
            await asyncio.gather(self._iopub, return_exceptions=True)

    def decode(self, parts: list[bytes]) -> Message | None:
        try:
            _, msg_list = self.session.feed_identities(parts)
            return self.session.deserialize(msg_list)
        except Exception as exc:  # a bad signature or frame: drop it, never the channel
            log.warning("kernel %s: undecodable message dropped: %s", self.kernel_id, exc)
            return None

    # -- iopub: state, activity, fan-out -----------------------------------------------------
    async def _follow_iopub(self, sock: zmq.asyncio.Socket) -> None:
        try:
            while True:
                msg = self.decode(await sock.recv_multipart())
                if msg is not None:
                    self._on_iopub(msg)
        finally:
            sock.close(linger=0)

    def _on_iopub(self, msg: Message) -> None:
        self.last_activity = utcnow()
        self._iopub_seen.set()
        if msg["msg_type"] == "status":
            self._track(msg)
        if self.listeners:
            text = to_client("iopub", msg)
            for send in list(self.listeners):
                send(text)

    def _track(self, msg: Message) -> None:
        state = msg["content"].get("execution_state")
        parent = msg.get("parent_header", {}).get("msg_id") or ""
        if state == "busy":
            if len(self._busy) >= MAX_BUSY_PARENTS:
                self._busy.clear()
            self._busy.add(parent)
        elif state == "idle":
            self._busy.discard(parent)
        else:  # starting, restarting, dead: no request is in flight any more
            self._busy.clear()
            self.execution_state = state or "idle"
            return
        self.execution_state = "busy" if self._busy else "idle"

    def reset(self, state: str) -> None:
        """A new process behind the same channels (a restart) or an unknown one (adopted)."""
        self._busy.clear()
        self.execution_state = state
        self.last_activity = utcnow()

    # -- the gateway's own requests ----------------------------------------------------------
    def _on_own_reply(self, channel: str, msg: Message) -> None:
        future = self._pending.get(msg.get("parent_header", {}).get("msg_id", ""))
        if future is not None and not future.done():
            future.set_result(msg)

    async def request(
        self, channel: str, msg_type: str, content: Message, *, timeout_s: float
    ) -> Message:
        """Send one request and wait for its reply (TimeoutError after ``timeout_s``)."""
        assert self._own is not None, "start() first"
        msg = self.session.msg(msg_type, content)
        msg_id = msg["header"]["msg_id"]
        future = self._pending[msg_id] = asyncio.get_running_loop().create_future()
        try:
            await self._own.send(channel, msg)
            return await asyncio.wait_for(future, timeout_s)
        finally:
            self._pending.pop(msg_id, None)

    async def wait_ready(self, *, timeout_s: float, alive: Callable[[], bool]) -> None:
        """Until the kernel answers ``kernel_info`` and our iopub subscription gets its
        messages (a SUB socket misses what is published before it is connected)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            self._iopub_seen.clear()
            wait_s = max(0.1, min(2.0, deadline - loop.time()))
            with contextlib.suppress(TimeoutError):
                await self.request("shell", "kernel_info_request", {}, timeout_s=wait_s)
                await asyncio.wait_for(self._iopub_seen.wait(), 1.0)
                return
            if not alive():
                raise KernelGone(f"kernel {self.kernel_id} exited while starting")
            if loop.time() >= deadline:
                raise TimeoutError(f"kernel {self.kernel_id} did not answer in {timeout_s:g} s")

    async def run_silently(self, code: str, *, timeout_s: float) -> None:
        """Execute ``code`` without output or history; RuntimeError when it raised."""
        reply = await self.request(
            "shell",
            "execute_request",
            {"code": code, "silent": True, "store_history": False, "allow_stdin": False},
            timeout_s=timeout_s,
        )
        if reply["content"].get("status") != "ok":
            error = reply["content"]
            raise RuntimeError(f"{error.get('ename')}: {error.get('evalue')}")

    async def ask_shutdown(self, *, timeout_s: float) -> None:
        """A ``shutdown_request`` on control; the kernel then exits by itself."""
        with contextlib.suppress(TimeoutError):
            await self.request(
                "control", "shutdown_request", {"restart": False}, timeout_s=timeout_s
            )

    def open(self, send: Send, on_message: OnMessage) -> Bridge:
        """Channels for one client: iopub through ``send``, its replies to ``on_message``."""
        self.listeners.add(send)
        return Bridge(self, on_message, on_close=lambda: self.listeners.discard(send))


class Bridge:
    """One client's shell, control and stdin sockets to the kernel."""

    def __init__(
        self,
        wire: KernelWire,
        on_message: OnMessage,
        *,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.wire = wire
        self._on_message = on_message
        self._on_close = on_close
        identity = uuid.uuid4().hex.encode()
        client = wire.client
        connect = {
            "shell": client.connect_shell,
            "control": client.connect_control,
            "stdin": client.connect_stdin,
        }
        self._sockets = {
            channel: cast(zmq.asyncio.Socket, make(identity=identity))
            for channel, make in connect.items()
        }
        self._readers = [
            asyncio.create_task(self._read(channel, sock))
            for channel, sock in self._sockets.items()
        ]

    async def _read(self, channel: str, sock: zmq.asyncio.Socket) -> None:
        try:
            while True:
                msg = self.wire.decode(await sock.recv_multipart())
                if msg is not None:
                    self._on_message(channel, msg)
        finally:
            sock.close(linger=0)

    async def send(self, channel: str, msg: Message) -> None:
        frames = self.wire.session.serialize(msg)
        buffers = [b.encode() if isinstance(b, str) else b for b in msg.get("buffers") or []]
        await self._sockets[channel].send_multipart([*frames, *buffers])

    async def close(self) -> None:
        if self._on_close is not None:
            self._on_close()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)

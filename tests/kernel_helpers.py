"""Kernel test helpers: a small Jupyter channels client (tornado's WebSocket client, Jupyter
messages), and kernels started over REST that are deleted after the test."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import tornado.websocket
from tornado.httpclient import HTTPRequest

if TYPE_CHECKING:
    from tests.support import Api


@contextmanager
def session_kernel(api: Api, session: str, spec: str = "vrungpu-1gpu") -> Iterator[dict[str, Any]]:
    """A kernel started with ``POST /api/kernels`` for `session` (its model); deleted after the
    block unless the test stopped it already."""
    started = api.post("/api/kernels", json={"name": spec, "session": session})
    assert started.status_code == 201, started.text
    kernel: dict[str, Any] = started.json()
    try:
        yield kernel
    finally:
        api.delete(f"/api/kernels/{kernel['id']}")  # 404 once the test stopped it


def assert_kernel_gone(api: Api, kernel: dict[str, Any]) -> None:
    """The kernel is no longer listed and its GPUs are back in the pool."""
    assert api.get(f"/api/kernels/{kernel['id']}").status_code == 404
    pool = api.get("/gpu/pool").json()
    assert kernel["id"] not in pool["busy_gpus"]
    assert set(kernel["gpus"]) <= set(pool["available_gpus"])


class Channels:
    """One WebSocket to ``/api/kernels/{id}/channels`` (ours or jupyter_server's)."""

    def __init__(self, conn: tornado.websocket.WebSocketClientConnection) -> None:
        self.conn = conn
        self.session = uuid.uuid4().hex
        self.seen: list[dict[str, Any]] = []  # every message received, in order

    @classmethod
    async def open(cls, url: str, token: str | None = None) -> Channels:
        headers = {"Authorization": f"token {token}"} if token else {}
        conn = await tornado.websocket.websocket_connect(
            HTTPRequest(url, headers=headers), max_message_size=64 * 2**20
        )
        return cls(conn)

    async def close(self) -> None:
        """Close and wait until the connection is down (no socket left for the GC)."""
        self.conn.close()
        try:
            async with asyncio.timeout(10):
                while await self.conn.read_message() is not None:
                    pass
        except TimeoutError:
            pass
        if self.conn.stream is not None:  # tornado's: done closing, or never will
            self.conn.stream.close()

    async def send(self, channel: str, msg_type: str, content: dict[str, Any]) -> str:
        msg_id = uuid.uuid4().hex
        header = {
            "msg_id": msg_id,
            "msg_type": msg_type,
            "session": self.session,
            "username": "test",
            "date": datetime.now(UTC).isoformat(),
            "version": "5.3",
        }
        msg = {"header": header, "parent_header": {}, "metadata": {}, "content": content}
        await self.conn.write_message(json.dumps({**msg, "channel": channel}))
        return msg_id

    async def next(self, timeout_s: float = 30) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.conn.read_message(), timeout_s)
        if raw is None:
            raise ConnectionError("the channels WebSocket closed")
        msg = json.loads(raw)
        self.seen.append(msg)
        return msg

    async def printed(self, msg_id: str, text: str) -> None:
        """Until the request ``msg_id`` printed ``text`` (the cell runs user code now)."""
        while True:
            msg = await self.next()
            mine = msg["parent_header"].get("msg_id") == msg_id
            if mine and msg["msg_type"] == "stream" and text in msg["content"]["text"]:
                return

    async def reply(self, msg_id: str, channel: str = "shell") -> dict[str, Any]:
        """The reply to the request ``msg_id``."""
        while True:
            msg = await self.next()
            if msg["channel"] == channel and msg["parent_header"].get("msg_id") == msg_id:
                return msg

    async def request(
        self, channel: str, msg_type: str, content: dict[str, Any], timeout_s: float = 60
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Send a request; its reply and the iopub messages it caused, up to status idle."""
        msg_id = await self.send(channel, msg_type, content)
        reply, iopub, idle = None, [], False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while reply is None or not idle:
            msg = await self.next(max(0.1, deadline - loop.time()))
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["channel"] == "iopub":
                iopub.append(msg)
                idle = idle or msg["content"].get("execution_state") == "idle"
            elif msg["channel"] == channel:
                reply = msg
        return reply, iopub

    async def execute(self, code: str, timeout_s: float = 60) -> Executed:
        reply, iopub = await self.request(
            "shell", "execute_request", {"code": code, "silent": False}, timeout_s
        )
        return Executed(reply, iopub)


class Executed:
    def __init__(self, reply: dict[str, Any], iopub: list[dict[str, Any]]) -> None:
        self.reply = reply
        self.iopub = iopub

    @property
    def status(self) -> str:
        return self.reply["content"]["status"]

    @property
    def stdout(self) -> str:
        return "".join(
            m["content"]["text"]
            for m in self.iopub
            if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"
        )

    def of_type(self, msg_type: str) -> list[dict[str, Any]]:
        return [m for m in self.iopub if m["msg_type"] == msg_type]

    def result(self) -> str:
        results = self.of_type("execute_result")
        return results[-1]["content"]["data"]["text/plain"] if results else ""

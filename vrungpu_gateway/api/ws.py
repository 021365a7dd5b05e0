"""`WS /ws`: live GPU state, task updates and task output (protocol: docs/streaming.md).

The handler is an adapter: it checks the token and the browser origin, hands the client's
messages to its `engine.streams.Client`, and writes what that client has queued, awaiting
each write so a client that stops reading holds at most one write's worth of our memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

import tornado.web
import tornado.websocket

from vrungpu_gateway.api.base import token_from_request
from vrungpu_gateway.api.guard import BrowserPolicy
from vrungpu_gateway.engine.streams import Client
from vrungpu_gateway.engine.users import User
from vrungpu_gateway.service import Gateway

log = logging.getLogger(__name__)

MAX_CLIENT_MESSAGE = 64 * 1024  # subscribe/unsubscribe are tiny
OVERRUN_CLOSE = 1008  # policy violation: the client stopped reading
REVOKED_CLOSE = 1008  # policy violation: the token no longer names the user
SEND_BUFFER_BYTES = 64 * 1024  # the kernel's share of a client that stops reading


def _dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, ensure_ascii=False, default=str)


class WebSocketHandler(tornado.websocket.WebSocketHandler):
    gateway: Gateway
    user: User  # who connected (set by prepare)

    def initialize(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.client: Client | None = None
        self._writer: asyncio.Task[None] | None = None  # held: asyncio keeps weak refs only

    @property
    def max_message_size(self) -> int:
        return MAX_CLIENT_MESSAGE

    def prepare(self) -> None:
        self._token = token_from_request(self.request)
        user = self.gateway.users.resolve(self._token)
        if user is not None:
            self.user = user
            self.gateway.users.watch(self)
        else:
            self.set_status(401)
            self.set_header("Content-Type", "application/json; charset=utf-8")
            self.finish(
                json.dumps(
                    {
                        "detail": "missing or wrong token (send ?token=<T> or an "
                        "'Authorization: token <T>' header)",
                        "code": "unauthorized",
                    }
                )
            )

    def users_reloaded(self) -> None:
        """The users file was re-read: a connection whose token no longer names the same user
        (removed, or its rights changed) ends."""
        if self.ws_connection is not None and self.gateway.users.resolve(self._token) != self.user:
            log.info("websocket client of user %s: token no longer valid, closing", self.user.name)
            self.close(REVOKED_CLOSE, "the user's token is no longer valid")

    def check_origin(self, origin: str) -> bool:
        """Our own page or an --allow-origin one (the app's guard already refused the rest
        with a JSON 403; tornado asks again here)."""
        return BrowserPolicy.from_config(self.gateway.config).cross_origin(self.request) is None

    async def open(self, *args: Any, **kwargs: Any) -> None:
        self._limit_send_buffer()
        hub = self.gateway.streams
        self.client = hub.connect(user=self.user, on_overrun=self._overrun)
        log.info(
            "websocket client %s connected (%d connected)",
            self.request.remote_ip,
            hub.client_count,
        )
        self._writer = asyncio.create_task(self._write_loop(self.client))
        self.client.start(await hub.init_message(user=self.user))

    async def on_message(self, message: str | bytes) -> None:
        if self.client is None:
            return
        try:
            data = json.loads(message)
        except (ValueError, UnicodeDecodeError):
            self.client.error("bad_message", "messages must be JSON objects")
            return
        if not isinstance(data, dict):
            self.client.error("bad_message", "messages must be JSON objects")
            return
        await self.client.handle(data)

    def on_close(self) -> None:
        hub = self.gateway.streams
        if self.client is not None:
            hub.disconnect(self.client)
            log.info(
                "websocket client %s disconnected (%d connected)",
                self.request.remote_ip,
                hub.client_count,
            )

    def _limit_send_buffer(self) -> None:
        """A fixed send buffer (no autotuning to megabytes): a client that stops reading is
        noticed after a little output instead of after tens of MB were encoded for it."""
        stream = getattr(self.ws_connection, "stream", None)
        sock = getattr(stream, "socket", None)
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)

    def _overrun(self) -> None:
        self.close(OVERRUN_CLOSE, "client too slow: messages piled up unread")

    async def _write_loop(self, client: Client) -> None:
        """Write queued messages a group at a time; the await paces us to the client. It ends
        when the client is closed (no messages) or the connection fails."""
        try:
            await self._write_groups(client)
        except Exception:
            log.exception("websocket writer failed; closing the connection")
            self.close(1011, "internal error")

    async def _write_groups(self, client: Client) -> None:
        while messages := await client.next_messages():
            writes: list[asyncio.Future[None]] = []
            for message in messages:
                try:
                    writes.append(self.write_message(_dumps(message)))
                except tornado.websocket.WebSocketClosedError:
                    break
            results = await asyncio.gather(*writes, return_exceptions=True)
            if len(writes) < len(messages) or any(isinstance(r, BaseException) for r in results):
                return


ROUTES = [
    (r"/ws", WebSocketHandler),
]

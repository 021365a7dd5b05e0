"""Kernel routes: the Jupyter Kernel Gateway protocol (`/api/kernelspecs`, `/api/kernels`,
`WS /api/kernels/{id}/channels`), so `jupyter lab --gateway-url` runs notebooks here.

Ours beyond Jupyter's: `POST /api/kernels` takes `session` (get-or-create by name) and
`gpu_id`; `GET /api/kernels?session=NAME` filters; models carry `session`, `gpus`, `device`,
`created_at`, `idle_s`, `queue_position`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import tornado.web
import tornado.websocket

from vrungpu_gateway.api.base import BaseHandler
from vrungpu_gateway.api.ws import WebSocketHandler
from vrungpu_gateway.engine.kernels.kernel import ClientLink
from vrungpu_gateway.errors import EngineError, InvalidRequest

log = logging.getLogger(__name__)

KERNEL_ID = r"(?P<kernel_id>[A-Za-z0-9_.-]{1,64})"
SPEC_NAME = r"(?P<name>[A-Za-z0-9_.-]{1,64})"
MAX_CHANNEL_MESSAGE = 1024 * 2**20  # a client message (e.g. a pushed variable) at most
MAX_UNSENT_BYTES = 64 * 2**20  # kernel output queued for a client that stopped reading
SLOW_CLIENT_CLOSE = 1008
SESSION_MAX = 200


def parse_start(body: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of ``KernelManager.start`` from a `POST /api/kernels` body."""
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise InvalidRequest("name must be a kernelspec name")
    env = body.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise InvalidRequest("env must be an object of strings")
    session = body.get("session")
    if session is not None and (
        not isinstance(session, str) or not session.strip() or len(session) > SESSION_MAX
    ):
        raise InvalidRequest(f"session must be a non-empty name of at most {SESSION_MAX} chars")
    gpu_id = body.get("gpu_id")
    if isinstance(gpu_id, float) and gpu_id.is_integer():
        gpu_id = int(gpu_id)  # 1.0 is an integer to JSON Schema
    if gpu_id is not None and (isinstance(gpu_id, bool) or not isinstance(gpu_id, int)):
        raise InvalidRequest("gpu_id must be an integer")
    return {"spec_name": name, "session": session, "gpu_id": gpu_id, "env": env}


class KernelSpecsHandler(BaseHandler):
    def get(self) -> None:
        self.write_json(self.gateway.kernels.specs())


class KernelSpecHandler(BaseHandler):
    def get(self, name: str) -> None:
        self.write_json(self.gateway.kernels.spec(name))


class KernelsHandler(BaseHandler):
    def get(self) -> None:
        session = self.get_query_argument("session", None)
        self.write_json(self.gateway.kernels.list(session=session, user=self.user))

    async def post(self) -> None:
        body = self.json_body() if self.request.body else {}
        args = parse_start(body)
        self.gateway.tasks.limits.check_env(args["env"])  # as for a run request
        args["spec_name"] = args["spec_name"] or self.gateway.kernels.specs()["default"]
        model, created = await self.gateway.kernels.start(**args, user=self.user)
        self.set_header("Location", f"/api/kernels/{model['id']}")
        self.write_json(model, status=201 if created else 200)


class KernelHandler(BaseHandler):
    def get(self, kernel_id: str) -> None:
        self.write_json(self.gateway.kernels.get(kernel_id, user=self.user))

    async def delete(self, kernel_id: str) -> None:
        await self.gateway.kernels.shutdown(kernel_id=kernel_id, user=self.user)
        self.set_status(204)
        self.finish()


class KernelInterruptHandler(BaseHandler):
    async def post(self, kernel_id: str) -> None:
        await self.gateway.kernels.interrupt(kernel_id=kernel_id, user=self.user)
        self.set_status(204)
        self.finish()


class KernelRestartHandler(BaseHandler):
    async def post(self, kernel_id: str) -> None:
        self.write_json(await self.gateway.kernels.restart(kernel_id=kernel_id, user=self.user))


class KernelChannelsHandler(WebSocketHandler):
    """`WS /api/kernels/{id}/channels`: Jupyter's JSON messages on every channel (token and
    browser origin checked as on `/ws`)."""

    def initialize(self, gateway: Any) -> None:
        super().initialize(gateway)
        self.link: ClientLink | None = None
        self._unsent = 0

    @property
    def max_message_size(self) -> int:
        return MAX_CHANNEL_MESSAGE

    async def get(self, *args: Any, **kwargs: Any) -> None:
        if not self.gateway.kernels.exists(kwargs["kernel_id"], user=self.user):
            self.set_status(404)
            self.set_header("Content-Type", "application/json; charset=utf-8")
            detail = f"kernel {kwargs['kernel_id']} not found"
            self.finish(json.dumps({"detail": detail, "code": "kernel_not_found"}))
            return
        await super().get(*args, **kwargs)

    async def open(self, *args: Any, **kwargs: Any) -> None:
        self.set_nodelay(True)  # small messages, one round trip each: no Nagle delay
        try:
            self.link = self.gateway.kernels.connect(
                kernel_id=kwargs["kernel_id"],
                send=self._send,
                end=self._kernel_ended,
                user=self.user,
            )
        except EngineError as exc:
            self.close(1011, exc.detail)

    async def on_message(self, message: str | bytes) -> None:
        if self.link is not None:
            await self.link.receive(message)

    def on_close(self) -> None:
        link, self.link = self.link, None
        if link is not None:
            tornado.ioloop.IOLoop.current().add_callback(self.gateway.kernels.disconnect, link)

    def _kernel_ended(self) -> None:
        self.link = None
        self.close(1000, "the kernel ended")

    def _send(self, data: str | bytes) -> None:
        """Write one kernel message; a client that lets too much pile up is disconnected
        (it reconnects, as Jupyter clients do) instead of growing our memory."""
        try:
            future = self.write_message(data, binary=isinstance(data, bytes))
        except tornado.websocket.WebSocketClosedError:
            return
        size = len(data)
        self._unsent += size
        future.add_done_callback(lambda _: self._sent(size))
        if self._unsent > MAX_UNSENT_BYTES:
            log.warning("kernel channels client too slow (%d bytes unsent): closing", self._unsent)
            self.close(SLOW_CLIENT_CLOSE, "client too slow: kernel messages piled up unread")

    def _sent(self, size: int) -> None:
        self._unsent -= size


ROUTES: list[tuple[str, type[tornado.web.RequestHandler]]] = [
    (r"/api/kernelspecs", KernelSpecsHandler),
    (rf"/api/kernelspecs/{SPEC_NAME}", KernelSpecHandler),
    (r"/api/kernels", KernelsHandler),
    (rf"/api/kernels/{KERNEL_ID}", KernelHandler),
    (rf"/api/kernels/{KERNEL_ID}/interrupt", KernelInterruptHandler),
    (rf"/api/kernels/{KERNEL_ID}/restart", KernelRestartHandler),
    (rf"/api/kernels/{KERNEL_ID}/channels", KernelChannelsHandler),
]

"""The base handler: token auth, JSON in and out, and the one error-to-status mapping."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import tornado.iostream
import tornado.web

from vrungpu_gateway.api.jsonin import parse_object
from vrungpu_gateway.engine.users import User
from vrungpu_gateway.errors import (
    Conflict,
    EngineError,
    InvalidRequest,
    NotFound,
    TooLarge,
    Unavailable,
)
from vrungpu_gateway.service import Gateway

log = logging.getLogger(__name__)

STATUS_OF: dict[type[EngineError], int] = {
    InvalidRequest: 400,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    Unavailable: 503,
}


def token_from_request(request: tornado.httputil.HTTPServerRequest) -> str | None:
    """The token a request carries: `Authorization: token|Bearer T`, or `?token=T`."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        return value.strip()
    values = request.query_arguments.get("token")
    return values[-1].decode("utf-8", "replace") if values else None


class ApiError(tornado.web.HTTPError):
    """An HTTP error with our JSON body."""

    def __init__(self, status: int, detail: str, code: str) -> None:
        super().__init__(status, reason=None, log_message=detail)
        self.detail = detail
        self.code = code


class BaseHandler(tornado.web.RequestHandler):
    gateway: Gateway
    user: User  # who asks (set by prepare; the admin for the main token or --no-auth)
    public = False  # True only for /health

    def initialize(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")

    def prepare(self) -> None:
        if self.public:
            return
        user = self.gateway.users.resolve(token_from_request(self.request))
        if user is None:
            raise ApiError(
                401,
                "missing or wrong token (send 'Authorization: token <T>' or ?token=<T>)",
                "unauthorized",
            )
        self.user = user

    # -- JSON helpers ------------------------------------------------------------------------
    def json_body(self) -> dict[str, Any]:
        """The body as a JSON object, strictly decoded (api/jsonin.py): 400 bad_json else."""
        return parse_object(self.request.body)

    def write_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(payload, default=str))

    def int_argument(
        self, name: str, default: int, *, minimum: int = 0, maximum: int | None = 2**31 - 1
    ) -> int:
        raw = self.get_query_argument(name, None)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise InvalidRequest(f"{name} must be an integer, got {raw!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f" and <= {maximum}" if maximum is not None else ""
            raise InvalidRequest(f"{name} must be >= {minimum}{bound}")
        return value

    def optional_int_argument(self, name: str) -> int | None:
        if self.get_query_argument(name, None) in (None, ""):
            return None
        return self.int_argument(name, 0)

    async def send_file(self, path: Path, filename: str | None = None) -> None:
        """Stream a file of ours (never a job's: ``send_fd``) as an attachment."""
        fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
        await self.send_fd(fd, filename or path.name)

    async def send_fd(self, fd: int, filename: str) -> None:
        """Stream the open file ``fd`` as an attachment, off the event loop; its length is the
        one it had when opened (a job may still change it: never more is sent)."""
        shown = re.sub(r"[^A-Za-z0-9._ -]", "_", filename) or "download"
        with os.fdopen(fd, "rb") as fh:
            left = os.fstat(fd).st_size
            self.set_header("Content-Type", "application/octet-stream")
            self.set_header("Content-Disposition", f'attachment; filename="{shown}"')
            self.set_header("Content-Length", str(left))
            while left and (chunk := await asyncio.to_thread(fh.read, min(left, 1024 * 1024))):
                left -= len(chunk)
                self.write(chunk)
                try:
                    await self.flush()
                except tornado.iostream.StreamClosedError:  # the client went away
                    return
            if left:  # it shrank while sent: the connection ends short, never with other bytes
                self.request.connection.close()
                return
        self.finish()

    # -- errors ------------------------------------------------------------------------------
    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, EngineError):
            status = next((s for cls, s in STATUS_OF.items() if isinstance(e, cls)), 400)
            e = ApiError(status, e.detail, e.code)
        super()._handle_request_exception(e)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, ApiError | EngineError):
            log.info("%s %s: %s", self.request.method, self.request.path, value.detail)
        else:
            super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError | EngineError):
            body = {"detail": exc.detail, "code": exc.code}
        elif isinstance(exc, tornado.web.HTTPError) and status_code < 500:
            body = {"detail": exc.log_message or self._reason, "code": f"http_{status_code}"}
        else:
            body = {"detail": "internal error (see the gateway log)", "code": "internal"}
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(body))


class NotFoundHandler(BaseHandler):
    """Unknown paths answer 404 in our JSON shape."""

    public = True

    def prepare(self) -> None:
        raise ApiError(404, f"no route {self.request.method} {self.request.path}", "no_route")

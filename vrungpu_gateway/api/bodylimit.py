"""Request body limits: a JSON body over ``--max-body-mb`` answers 413 in our JSON shape
before it is held, whether it declares its length or comes chunked.

Tornado refuses a body over the server's ``max_body_size`` by closing the connection with a
bare 400; ``BodyLimit`` sits between the server and the application and answers first. Routes
that stream their body (uploads) raise their own limit in ``prepare`` and are passed through;
when they refuse mid-body they call ``refuse`` so the client still reads one JSON line.
A single chunk that alone overshoots the limit by more than ``SLACK_BYTES`` meets tornado's
ceiling first: a bare 400 and a closed connection, the chunk never read either.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import tornado.httputil
import tornado.web

from vrungpu_gateway.errors import EngineError, TooLarge

log = logging.getLogger(__name__)

SLACK_BYTES = 2**20  # tornado's own ceiling lies this far above ours, so ours answers first
CODE = "body_too_large"


class BodyLimit(tornado.httputil.HTTPServerConnectionDelegate):
    """The application, with every buffered (non-streaming) request body capped."""

    def __init__(self, app: tornado.web.Application, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def start_request(
        self,
        server_conn: object,
        request_conn: tornado.httputil.HTTPConnection,
    ) -> tornado.httputil.HTTPMessageDelegate:
        inner = self.app.start_request(server_conn, request_conn)
        return _Limited(inner, request_conn, self.max_bytes)

    def on_close(self, server_conn: object) -> None:
        self.app.on_close(server_conn)


class _Limited(tornado.httputil.HTTPMessageDelegate):
    def __init__(
        self,
        inner: tornado.httputil.HTTPMessageDelegate,
        conn: tornado.httputil.HTTPConnection,
        max_bytes: int,
    ) -> None:
        self.inner = inner
        self.conn = conn
        self.max_bytes = max_bytes
        self.received = 0
        self.limited = False  # a buffered route: this wrapper enforces the limit
        self.refused = False
        self.start_line: tornado.httputil.RequestStartLine | None = None

    def headers_received(
        self,
        start_line: tornado.httputil.RequestStartLine | tornado.httputil.ResponseStartLine,
        headers: tornado.httputil.HTTPHeaders,
    ) -> Any:
        assert isinstance(start_line, tornado.httputil.RequestStartLine)
        self.start_line = start_line
        waiting = self.inner.headers_received(start_line, headers)
        if waiting is not None:
            return waiting  # a streaming route: its prepare() sets its own limit
        self.limited = True
        if declared_length(headers) > self.max_bytes:
            self._refuse()
        return None

    def data_received(self, chunk: bytes) -> Any:
        if self.refused:
            return None
        self.received += len(chunk)
        if self.limited and self.received > self.max_bytes:
            self._refuse()
            return None
        return self.inner.data_received(chunk)

    def finish(self) -> None:
        if not self.refused:
            self.inner.finish()

    def on_connection_close(self) -> None:
        self.inner.on_connection_close()

    def _refuse(self) -> None:
        """Answer 413 now; tornado drops the rest of the body and closes the connection."""
        self.refused = True
        self.inner.on_connection_close()  # the application lets go of what it buffered
        assert self.start_line is not None
        exc = body_too_large(self.max_bytes)
        log.info("%s %s: %s", self.start_line.method, self.start_line.path, exc.detail)
        body = json.dumps({"detail": exc.detail, "code": exc.code}).encode()
        headers = tornado.httputil.HTTPHeaders(
            {
                "Content-Type": "application/json; charset=utf-8",
                "Content-Length": str(len(body)),
                "Cache-Control": "no-store",
                "Connection": "close",
            }
        )
        status = tornado.httputil.ResponseStartLine(
            self.start_line.version, 413, "Content Too Large"
        )
        self.conn.write_headers(status, headers, body)
        self.conn.finish()


def body_too_large(max_bytes: int) -> TooLarge:
    return TooLarge(
        f"request body larger than {max_bytes / 2**20:g} MB (--max-body-mb); "
        "upload files as multipart/form-data",
        code=CODE,
    )


def declared_length(headers: tornado.httputil.HTTPHeaders) -> int:
    """The body length a request declares; 0 when absent (chunked) or bad (tornado answers
    a bad one itself)."""
    try:
        return int(headers.get("Content-Length", ""))
    except ValueError:
        return 0


def refuse(handler: tornado.web.RequestHandler, exc: EngineError) -> None:
    """Answer ``exc`` (413 or 400) before or in the middle of a streamed body, once: the rest
    of the body is never read, and the connection closes after the answer."""
    if handler._finished:  # noqa: SLF001 - tornado's own flag; no public accessor
        return
    log.info("%s %s: %s", handler.request.method, handler.request.path, exc.detail)
    handler.clear()
    handler.set_status(413 if isinstance(exc, TooLarge) else 400)
    handler.set_header("Connection", "close")  # so the client does not reuse it
    handler.finish(json.dumps({"detail": exc.detail, "code": exc.code}))

"""Builds the tornado Application: every resource module's ROUTES, settings, 404s, and the
browser-safety guard (api/guard.py) in front of all of them."""

from __future__ import annotations

import re
from typing import Any

import tornado.httputil
import tornado.log
import tornado.web

from vrungpu_gateway.api import (
    dashboard,
    docs,
    gpus,
    kernels,
    metrics,
    models,
    projects,
    root,
    tasks,
    ws,
)
from vrungpu_gateway.api.base import ApiError, BaseHandler, NotFoundHandler
from vrungpu_gateway.api.guard import BrowserPolicy, Refusal, body_type_refusal
from vrungpu_gateway.service import Gateway

ROUTE_MODULES = [root, gpus, tasks, projects, models, kernels, metrics, docs, dashboard, ws]
# The routes whose bodies are multipart uploads; every other state-changing route takes JSON.
UPLOAD_HANDLERS: tuple[type[tornado.web.RequestHandler], ...] = (
    projects.RunProjectHandler,
    models.ModelRegisterHandler,
)


def route_table() -> list[tuple[str, type[tornado.web.RequestHandler]]]:
    """(pattern, handler) of every route, in matching order."""
    return [route for module in ROUTE_MODULES for route in module.ROUTES]


_TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&#]*")


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's access log line, with any ?token= value masked (browsers put it in URLs)."""
    status = handler.get_status()
    log = tornado.log.access_log
    method = log.info if status < 400 else log.warning if status < 500 else log.error
    uri = _TOKEN_IN_QUERY.sub(r"\1***", handler.request.uri or "")
    method(
        "%d %s %s (%s) %.2fms",
        status,
        handler.request.method,
        uri,
        handler.request.remote_ip,
        1000.0 * handler.request.request_time(),
    )


@tornado.web.stream_request_body  # answered before its body is read, let alone parsed
class RefusedHandler(BaseHandler):
    """Answers a request the browser guard refused, whatever its route and method."""

    public = True

    def initialize(self, gateway: Gateway, refusal: Refusal) -> None:  # type: ignore[override]
        super().initialize(gateway)
        self.refusal = refusal

    def prepare(self) -> None:
        raise ApiError(*self.refusal)

    def data_received(self, chunk: bytes) -> None:
        pass


class GuardedApplication(tornado.web.Application):
    """An Application whose every request (REST, WebSocket upgrade, static file, 404) first
    passes the browser guard: Host, Origin, and the body type of state-changing requests."""

    def __init__(self, handlers: list[Any], *, gateway: Gateway, **settings: Any) -> None:
        super().__init__(handlers, **settings)
        self.gateway = gateway
        self.browser_policy = BrowserPolicy.from_config(gateway.config)

    def get_handler_delegate(
        self,
        request: tornado.httputil.HTTPServerRequest,
        target_class: type[tornado.web.RequestHandler],
        target_kwargs: dict[str, Any] | None = None,
        path_args: list[bytes] | None = None,
        path_kwargs: dict[str, bytes] | None = None,
    ) -> Any:
        uploads = issubclass(target_class, UPLOAD_HANDLERS)
        refusal = self.browser_policy.refusal(request) or body_type_refusal(
            request, multipart_ok=uploads
        )
        if refusal is not None:
            kwargs = {"gateway": self.gateway, "refusal": refusal}
            return super().get_handler_delegate(request, RefusedHandler, kwargs)
        return super().get_handler_delegate(
            request, target_class, target_kwargs, path_args, path_kwargs
        )


def make_app(gateway: Gateway, **settings: Any) -> tornado.web.Application:
    handlers: list[Any] = [
        (pattern, handler, {"gateway": gateway}) for pattern, handler in route_table()
    ]
    return GuardedApplication(
        handlers,
        gateway=gateway,
        default_handler_class=NotFoundHandler,
        default_handler_args={"gateway": gateway},
        xsrf_cookies=False,
        websocket_ping_interval=20,
        **{"log_function": log_request, **settings},
    )

"""Builds the tornado Application: every resource module's ROUTES, settings, 404s."""

from __future__ import annotations

import re
from typing import Any

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
from vrungpu_gateway.api.base import NotFoundHandler
from vrungpu_gateway.service import Gateway

ROUTE_MODULES = [root, gpus, tasks, projects, models, kernels, metrics, docs, dashboard, ws]


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


def make_app(gateway: Gateway, **settings: Any) -> tornado.web.Application:
    handlers: list[Any] = [
        (pattern, handler, {"gateway": gateway}) for pattern, handler in route_table()
    ]
    return tornado.web.Application(
        handlers,
        default_handler_class=NotFoundHandler,
        default_handler_args={"gateway": gateway},
        xsrf_cookies=False,
        websocket_ping_interval=20,
        **{"log_function": log_request, **settings},
    )

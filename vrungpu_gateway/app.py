"""Builds the tornado Application: every resource module's ROUTES, settings, 404s."""

from __future__ import annotations

from typing import Any

import tornado.web

from vrungpu_gateway.api import docs, gpus, projects, root, tasks
from vrungpu_gateway.api.base import NotFoundHandler
from vrungpu_gateway.service import Gateway

ROUTE_MODULES = [root, gpus, tasks, projects, docs]


def route_table() -> list[tuple[str, type[tornado.web.RequestHandler]]]:
    """(pattern, handler) of every route, in matching order."""
    return [route for module in ROUTE_MODULES for route in module.ROUTES]


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
        **settings,
    )

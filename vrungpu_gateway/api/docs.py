"""`/openapi.json` and `/docs`: the spec and a page that renders it (assets in the package)."""

from __future__ import annotations

from pathlib import Path

from vrungpu_gateway.api.base import BaseHandler
from vrungpu_gateway.api.openapi import build_spec
from vrungpu_gateway.engine.limits import RequestLimits

STATIC = Path(__file__).resolve().parent.parent / "static"


class OpenApiHandler(BaseHandler):
    def get(self) -> None:
        spec = build_spec(
            self.settings.get("openapi_extra"),
            gpu_count=len(self.gateway.scheduler.gpu_indices),
            limits=RequestLimits.from_config(self.gateway.config),
        )
        self.write_json(spec)


class DocsHandler(BaseHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish((STATIC / "docs" / "index.html").read_bytes())


ROUTES = [
    (r"/openapi.json", OpenApiHandler),
    (r"/docs", DocsHandler),
]

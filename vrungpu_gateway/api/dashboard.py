"""`/dashboard/`: the web dashboard (public files: they hold no data) and its login probe.

The page takes `?token=` from its URL once, keeps it in the browser's session storage and sends
it on every API call; the files themselves are public. `GET /dashboard/session` tells the page
whether the token it holds is good with a 200 either way, so checking a token never makes the
browser log a failed request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tornado.web

from vrungpu_gateway.api.base import BaseHandler, token_from_request
from vrungpu_gateway.service import Gateway

DASHBOARD = Path(__file__).resolve().parent.parent / "static" / "dashboard"


class DashboardRedirectHandler(BaseHandler):
    """`/dashboard` -> `/dashboard/`, keeping the query (a `?token=` the user pasted)."""

    public = True

    def get(self) -> None:
        query = f"?{self.request.query}" if self.request.query else ""
        self.redirect(f"/dashboard/{query}", permanent=False)

    head = get


class DashboardSessionHandler(BaseHandler):
    """Whether the request's token is accepted: `{auth_required, authenticated}`, always 200."""

    public = True

    def get(self) -> None:
        given = token_from_request(self.request)
        self.write_json(
            {
                "auth_required": self.gateway.token is not None,
                "authenticated": self.gateway.users.resolve(given) is not None,
            }
        )


class DashboardFileHandler(tornado.web.StaticFileHandler):
    """The page and its assets, revalidated on every load (ETag / Last-Modified -> 304)."""

    def initialize(self, gateway: Gateway) -> None:  # type: ignore[override]
        super().initialize(path=str(DASHBOARD), default_filename="index.html")

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Content-Type-Options", "nosniff")
        # The first load carries ?token= in its URL: never pass it on in a Referer.
        self.set_header("Referrer-Policy", "no-referrer")
        if path.endswith(".html") or not path:
            self.set_header("X-Frame-Options", "DENY")
            self.set_header("Content-Security-Policy", self._csp())

    def _csp(self) -> str:
        host = self.request.host
        return (
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            f"img-src 'self' data: blob:; connect-src 'self' ws://{host} wss://{host}; "
            "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
        )

    def get_content_type(self) -> str:
        if self.absolute_path and self.absolute_path.endswith((".js", ".mjs")):
            return "text/javascript; charset=utf-8"
        return super().get_content_type()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        code = "no_such_file" if status_code == 404 else f"http_{status_code}"
        self.finish({"detail": f"dashboard: {self._reason}", "code": code})


ROUTES = [
    (r"/dashboard", DashboardRedirectHandler),
    (r"/dashboard/session", DashboardSessionHandler),
    (r"/dashboard/(?P<path>.*)", DashboardFileHandler),
]

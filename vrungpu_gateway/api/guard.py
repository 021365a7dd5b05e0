"""Browser safety, as Jupyter Server guards itself: the Host names we answer (DNS rebinding),
the Origins that may change state or open a WebSocket (cross-site requests), and the body
types a state-changing route refuses (the "simple" types a page elsewhere may send without a
CORS preflight).

Pure functions of a request; app.py sends a refused request to one handler before any route
sees it, and BaseHandler and the WebSocket handlers ask the same questions.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import NamedTuple

from tornado.httputil import HTTPServerRequest

from vrungpu_gateway.config import GatewayConfig, is_loopback

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})
FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
SIMPLE_TYPES = frozenset({"text/plain", FORM, MULTIPART})
# Headers every current browser adds to a fetch, a form post or a WebSocket upgrade.
BROWSER_MARKS = ("Origin", "Sec-Fetch-Site", "Sec-Fetch-Mode")
_PORT = re.compile(r"^(.*?)(:\d+)?$")


class Refusal(NamedTuple):
    status: int
    detail: str
    code: str


def host_name(host: str) -> str:
    """`Host` without its port, brackets and final dot, lower case: `[::1]:9825` -> `::1`."""
    match = _PORT.match(host.strip().lower())
    name = match.group(1) if match else host
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    return name.removesuffix(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _origin_key(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


@dataclass(frozen=True)
class BrowserPolicy:
    """The Host names served beyond loopback ones and IP literals, and the foreign Origins
    trusted to change state (`*` in either: all)."""

    hosts: frozenset[str]
    origins: frozenset[str]

    @classmethod
    def from_config(cls, config: GatewayConfig) -> BrowserPolicy:
        hosts = {host_name(h) for h in config.allow_hosts if h.strip()}
        if config.host not in WILDCARD_BINDS:
            hosts.add(host_name(config.host))
        origins = {_origin_key(o) for o in config.allow_origins if o.strip()}
        return cls(hosts=frozenset(hosts), origins=frozenset(origins))

    def host_allowed(self, host: str) -> bool:
        """A loopback name, an IP literal (a rebinding page is always on a name the attacker
        owns), the bind address or an --allow-host name."""
        name = host_name(host)
        return "*" in self.hosts or name in self.hosts or is_loopback(name) or _is_ip(name)

    def origin_trusted(self, origin: str) -> bool:
        return "*" in self.origins or _origin_key(origin) in self.origins

    def cross_origin(self, request: HTTPServerRequest) -> str | None:
        """Why a request is a cross-site one we refuse (None: it is not). Tornado 6.6's
        algorithm: the browser's Sec-Fetch-Site when sent, else Origin against Host."""
        origin = request.headers.get("Origin")
        site = request.headers.get("Sec-Fetch-Site")
        if site in ("same-origin", "none"):
            return None
        if origin is None:
            return None if site is None else f"a {site} request without an Origin"
        if site is None and _same_origin(origin, request):
            return None
        if self.origin_trusted(origin):
            return None
        return f"Origin {origin[:200]} is not this gateway's"

    def refusal(self, request: HTTPServerRequest) -> Refusal | None:
        """Why a request is refused before it reaches its route: a foreign Host on any
        request, a foreign Origin on a state-changing request or a WebSocket upgrade."""
        if not self.host_allowed(request.host):
            name = host_name(request.host)[:200]
            return Refusal(
                403,
                f"Host {name!r} is not served here (DNS rebinding guard); if clients reach "
                f"this gateway by that name, start it with --allow-host {name}",
                "host_not_allowed",
            )
        if request.method in STATE_CHANGING or is_websocket_upgrade(request):
            reason = self.cross_origin(request)
            if reason is not None:
                return Refusal(
                    403,
                    f"{reason}: cross-site requests are refused (allow a page's origin "
                    "with --allow-origin)",
                    "origin_not_allowed",
                )
        return None


def _same_origin(origin: str, request: HTTPServerRequest) -> bool:
    """Origin's host:port is the request's Host (the scheme is not compared: behind a TLS
    proxy the request arrives as http)."""
    netloc = origin.strip().lower().partition("://")[2].rstrip("/")
    return bool(netloc) and netloc == request.headers.get("Host", "").strip().lower()


def is_websocket_upgrade(request: HTTPServerRequest) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def from_browser(request: HTTPServerRequest) -> bool:
    return any(name in request.headers for name in BROWSER_MARKS)


def body_type_refusal(request: HTTPServerRequest, *, multipart_ok: bool) -> Refusal | None:
    """A state-changing request with a body type a cross-site form or `fetch` may send
    without a preflight: 415, except multipart on an upload route and a form-typed body
    from a non-browser (`curl -d` and tornado's HTTP client label JSON so)."""
    if request.method not in STATE_CHANGING:
        return None
    mime = request.headers.get("Content-Type", "").partition(";")[0].strip().lower()
    if mime not in SIMPLE_TYPES or (mime == MULTIPART and multipart_ok):
        return None
    if mime == FORM and not from_browser(request):
        return None
    wanted = "multipart/form-data or application/json" if multipart_ok else "application/json"
    return Refusal(
        415,
        f"send the body as Content-Type: {wanted} (not {mime})",
        "unsupported_media_type",
    )

"""Jupyter server extension: a same-origin proxy from JupyterLab to the VrunGPU gateway.

The sidebar talks only to the Jupyter server, with Jupyter's own auth; this module adds the
gateway's token on the server side (read by ``vrungpu_magic.config.load_connection``, the same
settings the magic uses), so the token never reaches browser code except where the user asks
for the dashboard link. Routes, under the server's ``base_url``:

- ``vrungpu/api/<path>``  REST, GET/POST/PUT/DELETE → gateway ``/<path>`` (query and body kept)
- ``vrungpu/ws``          WebSocket ↔ gateway ``/ws``, relayed both ways
- ``vrungpu/dashboard``   ``{"url": "<gateway>/dashboard/?token=<token>"}``

Whose token: each Jupyter user's own. Under JupyterHub every user's single-user server runs as
that user and reads that user's own settings, so the configured token is the owner's
(``JUPYTERHUB_USER``); another Hub user let into this server (sharing) is refused, never
served with the owner's token. A server shared by several users (its own identity provider)
names each user's token in a file given by ``VRUNGPU_USER_TOKENS`` (JSON ``{"alice": "T"}``,
readable by the server's account alone); a user it does not name is refused (403,
``code: no_gateway_token``). A plain single-user ``jupyter lab`` has one user, its owner.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import stat
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import authorized, ws_authenticated
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from jupyter_server.utils import url_path_join
from tornado import httpclient, web, websocket

from vrungpu_magic.config import Connection, load_connection

AUTH_RESOURCE = "vrungpu"
API_PREFIX = "vrungpu/api/"
CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 300.0
# Request headers passed on to the gateway; Jupyter's cookies and auth are not.
FORWARD_REQUEST_HEADERS = ("Content-Type", "Accept")
# Response headers passed back (downloads need their name and type; listings their total).
FORWARD_RESPONSE_HEADERS = ("Content-Disposition", "Cache-Control", "X-Total-Count")
MAX_WS_MESSAGE_BYTES = 64 * 1024 * 1024

USER_TOKENS_ENV = "VRUNGPU_USER_TOKENS"
NO_TOKEN = "no_gateway_token"

ConnectionSource = Callable[[str | None], Connection]  # a Jupyter user's name -> theirs


class NoTokenForUser(Exception):
    """This Jupyter user has no gateway token of their own here."""


def read_user_tokens(path: str | None) -> dict[str, str]:
    """The per-user tokens file (``{}`` without one); ValueError, one line, when it is
    unreadable, not ``{"name": "token"}``, or readable by other accounts."""
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            if os.fstat(fh.fileno()).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ValueError(f"{USER_TOKENS_ENV} {path}: readable by others (chmod 600)")
            tokens = json.load(fh)
    except OSError as exc:
        raise ValueError(f"{USER_TOKENS_ENV} {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{USER_TOKENS_ENV} {path}: not valid JSON ({exc})") from None
    if not isinstance(tokens, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in tokens.items()
    ):
        raise ValueError(f'{USER_TOKENS_ENV} {path}: expected {{"user": "token", ...}}')
    return tokens


def connection_for(
    username: str | None,
    *,
    base: Connection,
    user_tokens: dict[str, str],
    owner: str | None,
) -> Connection:
    """The gateway connection to use for the Jupyter user ``username``: their own token
    from ``user_tokens``, else the configured one when they own this server (``owner``:
    the JupyterHub user it runs for; None with no Hub). NoTokenForUser otherwise."""
    if username is not None and username in user_tokens:
        return dataclasses.replace(base, token=user_tokens[username])
    if owner is None and not user_tokens:
        return base  # a single-user server: whoever passed Jupyter's auth is its owner
    if owner is not None and username == owner:
        return base
    raise NoTokenForUser(
        f"no VrunGPU token for Jupyter user {username!r} on this server (the configured "
        f"token is {owner or 'nobody'}'s); name one in {USER_TOKENS_ENV}"
    )


def user_connection(username: str | None) -> Connection:
    """``connection_for`` with this process's settings: the user's ~/.vrungpu (or
    VRUNGPU_URL/VRUNGPU_TOKEN), ``VRUNGPU_USER_TOKENS`` and ``JUPYTERHUB_USER``."""
    return connection_for(
        username,
        base=load_connection(),
        user_tokens=read_user_tokens(os.environ.get(USER_TOKENS_ENV)),
        owner=os.environ.get("JUPYTERHUB_USER") or None,
    )


def _username(user: Any) -> str | None:
    """The name of jupyter_server's current user (a ``User``, or a str in older servers)."""
    if user is None or isinstance(user, str):
        return user
    return getattr(user, "username", None)


def _auth_headers(conn: Connection) -> dict[str, str]:
    return {"Authorization": f"token {conn.token}"} if conn.token else {}


def _ws_url(http_url: str) -> str:
    """``http://host:port/prefix`` → ``ws://host:port/prefix/ws``."""
    parts = urlsplit(http_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws", "", ""))


class _GatewayHandler(APIHandler):
    """Base of the REST handlers: JSON errors in the gateway's ``{detail, code}`` shape."""

    auth_resource = AUTH_RESOURCE

    def initialize(self, connection: ConnectionSource) -> None:
        self._connection = connection

    def write_json_error(self, status: int, detail: str, code: str) -> None:
        self.set_status(status)
        self.finish(json.dumps({"detail": detail, "code": code}))

    def connection(self) -> Connection | None:
        """The current Jupyter user's connection; None (403 written) when they have none."""
        try:
            return self._connection(_username(self.current_user))
        except (NoTokenForUser, ValueError) as exc:
            self.log.warning("VrunGPU proxy: %s", exc)
            self.write_json_error(403, str(exc), NO_TOKEN)
            return None


class ApiProxyHandler(_GatewayHandler):
    """``vrungpu/api/<path>`` → gateway ``/<path>``: status and body are passed back as they are."""

    @web.authenticated
    @authorized
    async def get(self, path: str) -> None:
        await self._proxy(path)

    @web.authenticated
    @authorized
    async def post(self, path: str) -> None:
        await self._proxy(path)

    @web.authenticated
    @authorized
    async def put(self, path: str) -> None:
        await self._proxy(path)

    @web.authenticated
    @authorized
    async def delete(self, path: str) -> None:
        await self._proxy(path)

    async def _proxy(self, _path: str) -> None:
        conn = self.connection()
        if conn is None:
            return
        request = self._upstream_request(conn, self._raw_path())
        try:
            response = await httpclient.AsyncHTTPClient().fetch(request, raise_error=False)
        except OSError as exc:  # refused, unreachable, DNS
            self._unreachable(conn, str(exc))
            return
        if response.code == 599:  # tornado's "no HTTP response": timeout or connection error
            self._unreachable(conn, str(response.error))
            return
        self.set_status(response.code, response.reason or "Unknown")
        for name in FORWARD_RESPONSE_HEADERS:
            if name in response.headers:
                self.set_header(name, response.headers[name])
        if response.code in (204, 304):  # tornado refuses any body here, even b""
            self.finish()
            return
        content_type = response.headers.get("Content-Type", "application/json")
        self.finish(response.body or b"", set_content_type=content_type)

    def _raw_path(self) -> str:
        """The gateway path still percent-encoded (tornado's path argument is decoded)."""
        prefix = url_path_join(self.base_url, API_PREFIX)
        return self.request.path[len(prefix) :]

    def _upstream_request(self, conn: Connection, path: str) -> httpclient.HTTPRequest:
        url = f"{conn.url}/{path}"
        if self.request.query:
            url += f"?{self.request.query}"
        headers = _auth_headers(conn)
        for name in FORWARD_REQUEST_HEADERS:
            if name in self.request.headers:
                headers[name] = self.request.headers[name]
        method = self.request.method or "GET"
        return httpclient.HTTPRequest(
            url,
            method=method,
            headers=headers,
            body=self.request.body if method in ("POST", "PUT") else None,
            allow_nonstandard_methods=True,  # tornado refuses an empty POST body otherwise
            connect_timeout=CONNECT_TIMEOUT_S,
            request_timeout=REQUEST_TIMEOUT_S,
            follow_redirects=False,
            ca_certs=conn.ca_bundle,  # an https gateway with a private CA (None: the system's)
        )

    def _unreachable(self, conn: Connection, reason: str) -> None:
        self.log.warning("VrunGPU gateway %s unreachable: %s", conn.url, reason)
        detail = f"VrunGPU gateway at {conn.url} is unreachable: {reason}"
        self.write_json_error(502, detail, "gateway_unreachable")


class DashboardLinkHandler(_GatewayHandler):
    """``vrungpu/dashboard`` → the gateway dashboard's URL, token included, for a new tab."""

    @web.authenticated
    @authorized
    def get(self) -> None:
        conn = self.connection()
        if conn is None:
            return
        url = f"{conn.url}/dashboard/"
        if conn.token:
            url += f"?token={quote(conn.token, safe='')}"
        self.finish(json.dumps({"url": url}))


class WebSocketProxyHandler(WebSocketMixin, websocket.WebSocketHandler, JupyterHandler):
    """``vrungpu/ws`` ↔ gateway ``/ws``. The gateway's messages are relayed one at a time, so
    a slow browser applies back-pressure here and the gateway's bounded queue takes over."""

    auth_resource = AUTH_RESOURCE

    def initialize(self, connection: ConnectionSource) -> None:
        self._connection = connection
        self._conn: Connection | None = None  # the user's, chosen before the upgrade
        self._upstream: websocket.WebSocketClientConnection | None = None
        self._relay: asyncio.Task[None] | None = None
        self._closed = False

    def set_default_headers(self) -> None:
        """No Jupyter page headers on a WebSocket upgrade."""

    @ws_authenticated
    async def get(self, *args: Any, **kwargs: Any) -> None:
        user = self.current_user
        if not await ensure_async(self.authorizer.is_authorized(self, user, "read", AUTH_RESOURCE)):
            raise web.HTTPError(403)
        try:
            self._conn = self._connection(_username(user))
        except (NoTokenForUser, ValueError) as exc:
            self.log.warning("VrunGPU proxy: %s", exc)
            raise web.HTTPError(403, str(exc)) from None
        await super().get(*args, **kwargs)

    async def open(self, *args: Any, **kwargs: Any) -> None:
        super().open(*args, **kwargs)  # starts the keep-alive pings
        conn = self._conn
        assert conn is not None  # chosen in get(), before the upgrade
        request = httpclient.HTTPRequest(
            _ws_url(conn.url),
            headers=_auth_headers(conn),
            connect_timeout=CONNECT_TIMEOUT_S,
            ca_certs=conn.ca_bundle,
        )
        try:
            upstream = await websocket.websocket_connect(
                request, max_message_size=MAX_WS_MESSAGE_BYTES
            )
        except (OSError, httpclient.HTTPClientError, websocket.WebSocketError) as exc:
            self.log.warning("VrunGPU gateway WebSocket %s unreachable: %s", conn.url, exc)
            self.close(1011, "gateway unreachable")
            return
        if self._closed:  # the browser left while we were connecting
            upstream.close()
            return
        self._upstream = upstream
        self._relay = asyncio.create_task(self._relay_from_gateway(upstream))

    async def _relay_from_gateway(self, upstream: websocket.WebSocketClientConnection) -> None:
        while True:
            message = await upstream.read_message()
            if message is None:
                self.close(*_close_args(upstream))
                return
            try:
                await self.write_message(message, binary=isinstance(message, bytes))
            except websocket.WebSocketClosedError:
                upstream.close()
                return

    def on_message(self, message: str | bytes) -> None:
        if self._upstream is None:
            return
        try:
            self._upstream.write_message(message, binary=isinstance(message, bytes))
        except websocket.WebSocketClosedError:
            self.close(1011, "gateway closed")

    def on_close(self) -> None:
        self._closed = True
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None


def _close_args(upstream: websocket.WebSocketClientConnection) -> tuple[int, str]:
    """The code and reason to pass on when the gateway closes: codes that may not be sent
    (1005 no status, 1006 abnormal, 1015 TLS) become 1011."""
    code = upstream.close_code
    if code is None or code in (1005, 1006, 1015) or not 1000 <= code <= 4999:
        code = 1011
    return code, upstream.close_reason or "gateway closed"


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Register the proxy routes on the Jupyter server."""
    web_app = serverapp.web_app
    base_url = web_app.settings["base_url"]
    deps = {"connection": user_connection}
    web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base_url, API_PREFIX, "(.*)"), ApiProxyHandler, deps),
            (url_path_join(base_url, "vrungpu/ws"), WebSocketProxyHandler, deps),
            (url_path_join(base_url, "vrungpu/dashboard"), DashboardLinkHandler, deps),
        ],
    )
    conn = load_connection()
    serverapp.log.info("VrunGPU: proxying %svrungpu/ to %s", base_url, conn.url)

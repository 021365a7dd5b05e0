"""Browser safety against real gateways, with a token and with --no-auth: the Host allowlist
(DNS rebinding), Origin on state-changing requests and WebSocket upgrades (cross-site
requests), and the body types a page elsewhere can send without a preflight."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import websocket

from tests.support import TOKEN, GatewayProcess

EVIL = "http://evil.example"
NOTEBOOK = "http://notebook.example:8888"
ALLOWED = ["--allow-host", "gpu.lan", "--allow-origin", NOTEBOOK]


@pytest.fixture(scope="module", params=["token", "no_auth"])
def gw(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    token = TOKEN if request.param == "token" else None
    gateway = GatewayProcess(tmp_path_factory.mktemp("browser"), token=token, extra=ALLOWED)
    yield gateway.start()
    gateway.stop()


def call(gw: GatewayProcess, method: str, path: str, **kw: Any) -> requests.Response:
    headers = kw.pop("headers", {})
    if gw.token:
        headers.setdefault("Authorization", f"token {gw.token}")
    return requests.request(method, gw.url + path, headers=headers, timeout=30, **kw)


def task_count(gw: GatewayProcess) -> int:
    res = call(gw, "GET", "/tasks")
    assert res.status_code == 200, res.text
    return int(res.headers["X-Total-Count"])


def refused(res: requests.Response, status: int, code: str) -> None:
    assert res.status_code == status, res.text
    body = res.json()
    assert body["code"] == code and "\n" not in body["detail"], body


CODE = json.dumps({"code": "pass", "device": "cpu"})


# -- cross-site requests -----------------------------------------------------------------------
def test_cross_site_text_plain_post_is_refused_and_runs_nothing(gw: GatewayProcess) -> None:
    before = task_count(gw)
    for headers in (
        {"Origin": EVIL, "Content-Type": "text/plain;charset=UTF-8"},
        {"Origin": EVIL, "Content-Type": "application/json"},
        {"Origin": "null", "Content-Type": "application/json"},
        {"Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"},
    ):
        res = call(gw, "POST", "/run/async", data=CODE, headers=headers)
        refused(res, 403, "origin_not_allowed")
    for method, path in (("POST", "/task/x/cancel"), ("DELETE", "/task/x"), ("PATCH", "/model/m")):
        res = call(gw, method, path, headers={"Origin": EVIL})
        refused(res, 403, "origin_not_allowed")
    assert task_count(gw) == before


def test_simple_body_types_are_refused_on_json_routes(gw: GatewayProcess) -> None:
    before = task_count(gw)
    for ctype in ("text/plain", "multipart/form-data; boundary=x"):
        res = call(gw, "POST", "/run/async", data=CODE, headers={"Content-Type": ctype})
        refused(res, 415, "unsupported_media_type")
    own = {"Origin": gw.url, "Content-Type": "application/x-www-form-urlencoded"}
    refused(call(gw, "POST", "/run/async", data=CODE, headers=own), 415, "unsupported_media_type")
    res = call(gw, "POST", "/model/register", data=b"{}", headers={"Content-Type": "text/plain"})
    refused(res, 415, "unsupported_media_type")
    assert task_count(gw) == before


def test_own_and_allowed_origins_and_plain_clients_are_served(gw: GatewayProcess) -> None:
    json_type = {"Content-Type": "application/json; charset=utf-8"}
    for extra in (
        {"Origin": gw.url},  # the dashboard
        {"Origin": NOTEBOOK},  # --allow-origin
        {"Origin": EVIL, "Sec-Fetch-Site": "same-origin"},  # the browser's own word wins
        {},  # a script
    ):
        res = call(gw, "POST", "/run/async", data=CODE, headers={**json_type, **extra})
        assert res.status_code == 202, (extra, res.text)
    # `curl -d` (the seed README) labels JSON as a form: served when no browser sent it
    curl = {"Content-Type": "application/x-www-form-urlencoded"}
    assert call(gw, "POST", "/run/async", data=CODE, headers=curl).status_code == 202
    assert call(gw, "POST", "/run/async", data=CODE).status_code == 202  # no type at all


# -- Host -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path", ["/", "/health", "/dashboard/", "/dashboard/session", "/tasks", "/nowhere", "/metrics"]
)
def test_a_foreign_host_is_refused_on_every_route(gw: GatewayProcess, path: str) -> None:
    refused(call(gw, "GET", path, headers={"Host": "evil.example"}), 403, "host_not_allowed")
    port = gw.url.rsplit(":", 1)[1]
    res = call(gw, "GET", path, headers={"Host": f"evil.example:{port}"})
    refused(res, 403, "host_not_allowed")
    assert "--allow-host evil.example" in res.json()["detail"]


def test_loopback_names_ip_literals_and_allowed_hosts_are_served(gw: GatewayProcess) -> None:
    port = gw.url.rsplit(":", 1)[1]
    for host in ("localhost", "127.0.0.1", "[::1]", "10.1.2.3", "[fe80::1]", "gpu.lan", "GPU.LAN."):
        res = call(gw, "GET", "/health", headers={"Host": f"{host}:{port}"})
        assert res.status_code == 200, (host, res.text)


def test_allow_host_star_serves_any_name(start_gateway: Callable[..., GatewayProcess]) -> None:
    gw = start_gateway(extra=["--allow-host", "*"])
    assert call(gw, "GET", "/health", headers={"Host": "anything.example"}).status_code == 200


# -- WebSockets ---------------------------------------------------------------------------------
def ws_connect(gw: GatewayProcess, path: str = "/ws", **options: Any) -> websocket.WebSocket:
    url = gw.url.replace("http://", "ws://") + path + (f"?token={gw.token}" if gw.token else "")
    options.setdefault("suppress_origin", True)
    return websocket.create_connection(url, timeout=30, **options)


def ws_refused(gw: GatewayProcess, path: str, code: str, **options: Any) -> None:
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        ws_connect(gw, path, **options)
    assert info.value.status_code == 403
    assert json.loads(info.value.resp_body)["code"] == code


@pytest.mark.parametrize("path", ["/ws", "/api/kernels/k1/channels"])
def test_websockets_refuse_foreign_origins_and_hosts(gw: GatewayProcess, path: str) -> None:
    foreign = {"suppress_origin": False, "origin": EVIL}
    ws_refused(gw, path, "origin_not_allowed", **foreign)
    ws_refused(gw, path, "host_not_allowed", host="evil.example")
    ws_refused(gw, path, "host_not_allowed", host="evil.example", **foreign)


def test_websockets_serve_own_and_allowed_origins(gw: GatewayProcess) -> None:
    for origin in (gw.url, NOTEBOOK):
        ws = ws_connect(gw, suppress_origin=False, origin=origin)
        assert json.loads(ws.recv())["type"] == "init"
        ws.close()
    ws = ws_connect(gw, host="gpu.lan")
    assert json.loads(ws.recv())["type"] == "init"
    ws.close()
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        ws_connect(gw, "/api/kernels/k1/channels", suppress_origin=False, origin=gw.url)
    assert info.value.status_code == 404  # past the guard: no such kernel

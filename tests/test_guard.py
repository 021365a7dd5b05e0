"""The browser guard's rules in process (api/guard.py): Host names, Origins, body types."""

from __future__ import annotations

import pytest
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

from vrungpu_gateway.api.guard import BrowserPolicy, body_type_refusal, host_name
from vrungpu_gateway.config import GatewayConfig


def request(method: str = "POST", **headers: str) -> HTTPServerRequest:
    fields = HTTPHeaders({k.replace("_", "-"): v for k, v in headers.items()})
    fields.setdefault("Host", "127.0.0.1:9825")
    line = RequestStartLine(method, "/run/async", "HTTP/1.1")
    return HTTPServerRequest(start_line=line, headers=fields)


def policy(**config: object) -> BrowserPolicy:
    return BrowserPolicy.from_config(GatewayConfig(**config))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("host", "name"),
    [("[::1]:9825", "::1"), ("LocalHost.", "localhost"), ("gpu.lan:80", "gpu.lan"), ("x", "x")],
)
def test_host_name(host: str, name: str) -> None:
    assert host_name(host) == name


def test_hosts_served() -> None:
    default = policy()
    for host in ("localhost:9825", "127.0.0.1", "127.0.0.2:1", "[::1]:9825", "10.0.0.7:9825"):
        assert default.host_allowed(host), host
    for host in ("evil.example", "localhost.evil.example:9825", "gpu.lan", ""):
        assert not default.host_allowed(host), host
    named = policy(host="gpu.lan", allow_hosts=["ml.example.org"])
    assert named.host_allowed("GPU.LAN:9825") and named.host_allowed("ml.example.org")
    assert not policy(host="0.0.0.0").host_allowed("0.0.0.0.evil.example")
    assert policy(allow_hosts=["*"]).host_allowed("anything.example")


def test_origins() -> None:
    trusting = policy(allow_origins=["http://notebook.example:8888/"])
    own = request(Origin="http://127.0.0.1:9825")
    assert trusting.cross_origin(own) is None
    assert trusting.cross_origin(request(Origin="HTTP://notebook.example:8888")) is None
    assert trusting.cross_origin(request()) is None  # a script sends no Origin
    assert trusting.cross_origin(request(Sec_Fetch_Site="same-origin", Origin="http://x")) is None
    for foreign in (
        request(Origin="http://evil.example"),
        request(Origin="null"),
        request(Sec_Fetch_Site="cross-site"),
        request(Sec_Fetch_Site="same-site", Origin="http://127.0.0.1:9825"),
    ):
        assert trusting.cross_origin(foreign) is not None
    assert policy(allow_origins=["*"]).cross_origin(request(Origin="http://evil.example")) is None


def test_refusal_order_and_methods() -> None:
    default = policy()
    foreign_host = request("GET", Host="evil.example", Origin="http://evil.example")
    assert default.refusal(foreign_host).code == "host_not_allowed"  # type: ignore[union-attr]
    assert default.refusal(request("GET", Origin="http://evil.example")) is None
    upgrade = request("GET", Origin="http://evil.example", Upgrade="websocket")
    assert default.refusal(upgrade).code == "origin_not_allowed"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("ctype", "browser", "multipart_ok", "refused"),
    [
        ("application/json; charset=utf-8", True, False, False),
        ("", True, False, False),
        ("text/plain;charset=UTF-8", False, False, True),
        ("multipart/form-data; boundary=x", False, False, True),
        ("multipart/form-data; boundary=x", True, True, False),
        ("application/x-www-form-urlencoded", False, False, False),  # curl -d
        ("application/x-www-form-urlencoded", True, False, True),
        ("application/x-www-form-urlencoded", True, True, True),
    ],
)
def test_body_types(ctype: str, browser: bool, multipart_ok: bool, refused: bool) -> None:
    headers = {"Content_Type": ctype} if ctype else {}
    if browser:
        headers["Sec_Fetch_Mode"] = "cors"
    answer = body_type_refusal(request(**headers), multipart_ok=multipart_ok)
    assert (answer is not None) == refused
    if answer is not None:
        assert answer.status == 415 and answer.code == "unsupported_media_type"
    assert body_type_refusal(request("GET", Content_Type=ctype), multipart_ok=False) is None

"""The dashboard's files are served without a token, hold no token, work offline, and the
token a browser puts in URLs never reaches the gateway's log."""

from __future__ import annotations

import re
from collections.abc import Callable

import requests

from tests.support import TOKEN, GatewayProcess, wait_for
from vrungpu_gateway.api.dashboard import DASHBOARD


def test_page_and_assets_are_served_without_a_token(gateway: GatewayProcess) -> None:
    page = requests.get(gateway.url + "/dashboard/", timeout=5)
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert 'id="login-error"' in page.text
    for asset in ("js/app.js", "style.css", "vendor/d3.min.js", "favicon.svg"):
        res = requests.get(f"{gateway.url}/dashboard/{asset}", timeout=5)
        assert res.status_code == 200, asset
        assert res.headers["Cache-Control"] == "no-cache", asset
    js = requests.get(gateway.url + "/dashboard/js/app.js", timeout=5)
    assert js.headers["Content-Type"].startswith("text/javascript")
    again = requests.get(
        gateway.url + "/dashboard/js/app.js",
        headers={"If-None-Match": js.headers["Etag"]},
        timeout=5,
    )
    assert again.status_code == 304


def test_index_holds_no_token_even_when_asked_with_one(gateway: GatewayProcess) -> None:
    for path in ("/dashboard/index.html", f"/dashboard/?token={TOKEN}"):
        res = requests.get(gateway.url + path, timeout=5)
        assert res.status_code == 200
        assert TOKEN not in res.text


def test_bare_path_redirects_and_keeps_the_query(gateway: GatewayProcess) -> None:
    res = requests.get(f"{gateway.url}/dashboard?token={TOKEN}", allow_redirects=False, timeout=5)
    assert res.status_code == 302
    assert res.headers["Location"] == f"/dashboard/?token={TOKEN}"


def test_session_probe_answers_200_either_way(gateway: GatewayProcess) -> None:
    url = gateway.url + "/dashboard/session"
    assert requests.get(url, timeout=5).json() == {"auth_required": True, "authenticated": False}
    wrong = requests.get(url, headers={"Authorization": "token nope"}, timeout=5)
    assert wrong.status_code == 200 and wrong.json()["authenticated"] is False
    right = requests.get(url, headers={"Authorization": f"token {TOKEN}"}, timeout=5)
    assert right.json() == {"auth_required": True, "authenticated": True}


def test_session_probe_without_auth(start_gateway: Callable[..., GatewayProcess]) -> None:
    gw = start_gateway(token=None)
    res = requests.get(gw.url + "/dashboard/session", timeout=5)
    assert res.json() == {"auth_required": False, "authenticated": True}


def test_missing_files_and_escapes_get_json_errors(gateway: GatewayProcess) -> None:
    missing = requests.get(gateway.url + "/dashboard/nope.js", timeout=5)
    assert missing.status_code == 404 and missing.json()["code"] == "no_such_file"
    for path in ("/dashboard/%2e%2e/%2e%2e/api/base.py", "/dashboard/..%2f..%2fapp.py"):
        res = requests.get(gateway.url + path, timeout=5)
        assert res.status_code in (403, 404), path
        assert "import" not in res.text


def test_the_token_in_urls_is_masked_in_the_access_log(gateway: GatewayProcess) -> None:
    requests.get(f"{gateway.url}/dashboard/?token={TOKEN}", timeout=5)
    requests.get(f"{gateway.url}/gpu?token={TOKEN}", timeout=5)
    requests.get(f"{gateway.url}/gpu?x=1&token={TOKEN}&y=2", timeout=5)
    # The access line is written just after the response: wait for the last one.
    wait_for(lambda: "/gpu?x=1&token=***&y=2" in gateway.log(), 10, what="the access log")
    access = [line for line in gateway.log().splitlines() if "tornado.access" in line]
    assert any("/dashboard/?token=***" in line for line in access), access
    assert not any(TOKEN in line for line in access)


def test_the_dashboard_loads_nothing_from_the_network() -> None:
    """Offline: no CDN, no remote fonts; D3 is vendored with its licence."""
    assert (DASHBOARD / "vendor" / "d3.min.js").stat().st_size > 100_000
    assert "Mike Bostock" in (DASHBOARD / "vendor" / "d3.LICENSE").read_text()
    own = [DASHBOARD / "index.html", DASHBOARD / "style.css", *DASHBOARD.glob("js/*.js")]
    for path in own:
        text = path.read_text()
        assert not re.search(r"""(src|href)\s*=\s*["']https?://""", text), path
        assert not re.search(r"""(import|from)\s*["']https?://""", text), path
        assert "@import url(" not in text, path

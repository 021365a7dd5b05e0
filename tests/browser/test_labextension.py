"""The JupyterLab sidebar and the Jupyter server extension that proxies it to the gateway.

A real gateway (``--gpus sim:2``) and a real ``jupyter lab`` (env ``VRUNGPU_URL`` /
``VRUNGPU_TOKEN``, isolated config, data, runtime, settings and workspace dirs) are started
once for the session (``tests/browser/conftest.py``). The proxy tests use plain HTTP/WebSocket
clients; the browser tests drive Debian's Chromium (``/usr/bin/chromium``) through Python
Playwright, collect the page's console errors and assert there are none, and leave screenshots
in ``test-artifacts/``.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

from tests.kernel_helpers import assert_kernel_gone, session_kernel
from tests.support import GatewayProcess, wait_for

if TYPE_CHECKING:
    from tests.browser.conftest import JupyterProcess, WatchedPage

PANEL = "#vrungpu-panel"
PROGRESS_CODE = (
    "import time\n"
    "for i in range(1,41):\n"
    "    print(f'[PROGRESS:{i*2.5}:step {i}]', flush=True)\n"
    "    time.sleep(0.25)"
)


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


# --- fixtures --------------------------------------------------------------------------
# The browser, the pages, the gateway (`lab_gateway`) and JupyterLab (`lab`) are
# tests/browser/conftest.py's.


@pytest.fixture
def gateway(lab_gateway: GatewayProcess) -> GatewayProcess:
    return lab_gateway


@pytest.fixture
def lab_page(new_page: Callable[..., WatchedPage], lab: JupyterProcess) -> WatchedPage:
    """A fresh browser context on JupyterLab, collecting console errors and page errors."""
    lp = new_page(viewport=(1400, 900))
    # ?reset: start from an empty layout, whatever an earlier test left in the workspace.
    lp.page.goto(f"{lab.url}lab?reset&token={lab.token}", wait_until="domcontentloaded")
    return lp


def open_sidebar(lp: WatchedPage) -> Any:
    tab = lp.page.locator('.jp-SideBar.jp-mod-left li[data-id="vrungpu-panel"]')
    tab.wait_for(state="visible", timeout=90_000)
    # The layout is restored by the time the splash screen goes.
    lp.page.wait_for_selector("#jupyterlab-splash", state="detached", timeout=90_000)
    if "lm-mod-current" not in (tab.get_attribute("class") or ""):
        tab.click()  # clicking the current tab would close the panel
    lp.page.wait_for_selector(f'{PANEL}[data-state="ok"]', timeout=30_000)
    return lp.page.locator(PANEL)


# --- packaging -------------------------------------------------------------------------


def test_labextension_listed_enabled(jupyter: str) -> None:
    out = subprocess.run(
        [jupyter, "labextension", "list"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = [_plain(line) for line in (out.stdout + out.stderr).splitlines()]
    ours = [line for line in lines if "vrungpu-labext" in line]
    assert ours, "\n".join(lines)
    assert re.search(r"vrungpu-labext v\S+ enabled\s+OK", ours[0]), ours[0]


# --- the proxy, without a browser ------------------------------------------------------


def test_proxy_returns_gateway_gpu_json(lab: JupyterProcess, gateway: GatewayProcess) -> None:
    through = lab.get("vrungpu/api/gpu", headers=lab.auth)
    assert through.status_code == 200, through.text
    direct = gateway.api.get("/gpu").json()
    body = through.json()
    assert body.keys() == direct.keys()
    assert [(d["index"], d["name"]) for d in body["devices"]] == [
        (d["index"], d["name"]) for d in direct["devices"]
    ]
    assert len(body["devices"]) == 2


def test_proxy_requires_jupyter_auth(lab: JupyterProcess) -> None:
    assert lab.get("vrungpu/api/gpu").status_code in (401, 403)
    wrong = {"Authorization": "token not-the-jupyter-token"}
    assert lab.get("vrungpu/api/gpu", headers=wrong).status_code in (401, 403)
    assert lab.get("vrungpu/dashboard").status_code in (401, 403)
    # The gateway's token is not Jupyter's: it must not open the proxy either.
    gw_token = {"Authorization": "token test-token-0123456789abcdef"}
    assert lab.get("vrungpu/api/gpu", headers=gw_token).status_code in (401, 403)


def test_proxy_passes_query_body_and_errors(lab: JupyterProcess, gateway: GatewayProcess) -> None:
    listed = lab.get("vrungpu/api/tasks?limit=1", headers=lab.auth)
    assert listed.status_code == 200 and isinstance(listed.json(), list)
    assert listed.headers["X-Total-Count"].isdigit()  # the proxy passes the listing's total
    submitted = requests.post(
        lab.url + "vrungpu/api/run/async",
        json={"code": "print('via the jupyter proxy')", "name": "proxied", "timeout": 60},
        headers=lab.auth,
        timeout=30,
    )
    assert submitted.status_code == 202, submitted.text
    task_id = submitted.json()["task_id"]

    def finished() -> dict[str, Any] | None:
        task = lab.get(f"vrungpu/api/task/{task_id}", headers=lab.auth).json()
        return task if task["status"] in ("completed", "failed") else None

    task = wait_for(finished, 60, 0.2, "proxied task to finish")
    assert task is not None
    assert task["status"] == "completed", task
    missing = lab.get("vrungpu/api/task/no%20such%2Ftask", headers=lab.auth)
    assert missing.status_code == 404
    assert set(missing.json()) >= {"detail", "code"}
    assert missing.json() == gateway.api.get("/task/no%20such%2Ftask").json()


def test_proxy_lists_and_deletes_kernels(lab: JupyterProcess, gateway: GatewayProcess) -> None:
    with session_kernel(gateway.api, "proxied", spec="vrungpu-cpu") as kernel:
        listed = lab.get("vrungpu/api/api/kernels", headers=lab.auth)
        assert listed.status_code == 200
        assert [k["session"] for k in listed.json() if k["id"] == kernel["id"]] == ["proxied"]
        url = f"{lab.url}vrungpu/api/api/kernels/{kernel['id']}"
        stopped = requests.delete(url, headers=lab.auth, timeout=30)
        assert (stopped.status_code, stopped.content) == (204, b"")
        assert requests.delete(url, timeout=30).status_code in (401, 403)  # Jupyter's auth first
        again = requests.delete(url, headers=lab.auth, timeout=30)
        assert again.status_code == 404 and again.json()["code"]


def test_dashboard_link_carries_gateway_token(lab: JupyterProcess, gateway: GatewayProcess) -> None:
    res = lab.get("vrungpu/dashboard", headers=lab.auth)
    assert res.status_code == 200
    assert res.json() == {"url": f"{gateway.url}/dashboard/?token={gateway.token}"}


def test_proxy_websocket_relays_gateway_messages(
    lab: JupyterProcess, gateway: GatewayProcess
) -> None:
    import websocket  # websocket-client, a dependency of vrungpu

    if gateway.api.get("/ws").status_code == 404:
        pytest.skip("this gateway has no /ws route yet")
    ws_url = lab.url.replace("http://", "ws://") + "vrungpu/ws"
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(ws_url, timeout=10)
    assert refused.value.status_code in (401, 403)
    conn = websocket.create_connection(f"{ws_url}?token={lab.token}", timeout=15)
    try:
        first = json.loads(conn.recv())
        assert first["type"] == "init"
        assert len(first["gpus"]) == 2
    finally:
        conn.close()


def test_proxy_reports_unreachable_gateway(
    start_lab: Callable[..., JupyterProcess], tmp_path: Path
) -> None:
    dead = start_lab(tmp_path, _dead_url(), "whatever", app="server")
    res = dead.get("vrungpu/api/gpu", headers=dead.auth)
    assert res.status_code == 502
    body = res.json()
    assert body["code"] == "gateway_unreachable"
    assert "unreachable" in body["detail"]


# --- the sidebar in Chromium -----------------------------------------------------------


@pytest.mark.browser
def test_sidebar_lists_gpus_and_stands_by_when_hidden(lab_page: WatchedPage) -> None:
    sockets: list[Any] = []

    def on_socket(ws: Any) -> None:
        if "/vrungpu/ws" in ws.url:
            sockets.append(ws)

    lab_page.page.on("websocket", on_socket)
    panel = open_sidebar(lab_page)
    rows = panel.locator(".jp-VrunGPU-gpu")
    rows.first.wait_for(timeout=10_000)
    assert panel.locator(".jp-VrunGPU-title").inner_text() == "VrunGPU"
    assert rows.count() == 2
    assert "Simulated GPU 0" in rows.nth(0).inner_text()
    assert panel.locator(".jp-VrunGPU-openDashboard").is_visible()
    lab_page.page.wait_for_selector(f'{PANEL} .jp-VrunGPU-linkState[data-link="open"]')
    lab_page.shot("labextension-gpus.png")
    # Hiding the panel closes its socket and stops polling; showing it reconnects.
    tab = lab_page.page.locator('.jp-SideBar.jp-mod-left li[data-id="vrungpu-panel"]')
    tab.click()
    assert sockets
    for ws in sockets:  # (a plain sleep-loop would not let Playwright deliver the event)
        if not ws.is_closed():
            ws.wait_for_event("close", timeout=10_000)
    assert panel.locator('.jp-VrunGPU-linkState[data-link="idle"]').count() == 1
    tab.click()
    lab_page.page.wait_for_selector(f'{PANEL} .jp-VrunGPU-linkState[data-link="open"]')
    lab_page.assert_no_errors()


@pytest.mark.browser
def test_sidebar_follows_and_cancels_a_task(lab_page: WatchedPage, gateway: GatewayProcess) -> None:
    page = lab_page.page
    panel = open_sidebar(lab_page)
    task_id = gateway.api.submit(PROGRESS_CODE, timeout=120, name="sidebar-progress")
    row = panel.locator(f'.jp-VrunGPU-task[data-task-id="{task_id}"]')
    row.wait_for(timeout=15_000)

    def progress() -> float:
        return float(row.get_attribute("data-progress") or 0)

    first = wait_for(lambda: progress() > 0 and progress(), 15, 0.1, "progress above 0")
    wait_for(lambda: progress() > first, 15, 0.1, f"progress rising above {first}")
    assert row.get_attribute("data-status") == "running"
    busy = panel.locator('.jp-VrunGPU-gpu[data-busy="true"]')
    wait_for(lambda: busy.count() == 1, 10, 0.1, "one GPU shown as held")
    assert "held by sidebar-progress" in busy.inner_text()
    lab_page.shot("labextension-running.png")

    row.click()
    log_view = panel.locator(f'.jp-VrunGPU-logSection[data-task-id="{task_id}"]')
    log_view.wait_for(state="visible", timeout=10_000)
    log_text = log_view.locator(".jp-VrunGPU-log")
    wait_for(lambda: "step 2]" in log_text.inner_text(), 15, 0.1, "the task's log")
    # Replayed from offset 0 and then live: every line once, from the first.
    assert log_text.inner_text().count("[PROGRESS:2.5:step 1]") == 1
    cancel = log_view.locator("button.jp-VrunGPU-cancel")
    assert cancel.is_enabled()
    cancel.click()
    page.wait_for_selector(
        f'{PANEL} .jp-VrunGPU-task[data-task-id="{task_id}"][data-status="cancelled"]',
        timeout=30_000,
    )
    assert gateway.api.task(task_id)["status"] == "cancelled"
    wait_for(lambda: cancel.is_disabled(), 10, 0.1, "Cancel to be disabled")
    lab_page.shot("labextension-cancelled.png")
    lab_page.assert_no_errors()


@pytest.mark.browser
def test_sidebar_lists_a_kernel_and_stops_it(
    lab_page: WatchedPage, gateway: GatewayProcess
) -> None:
    with session_kernel(gateway.api, "lab-sidebar") as kernel:
        kernel_id, [gpu] = kernel["id"], kernel["gpus"]
        panel = open_sidebar(lab_page)
        row = panel.locator(f'.jp-VrunGPU-kernel[data-kernel-id="{kernel_id}"]')
        row.wait_for(timeout=15_000)
        assert row.locator(".jp-VrunGPU-kernelSession").inner_text() == "lab-sidebar"
        assert row.locator(".jp-VrunGPU-kernelPlace").inner_text() == f"GPU {gpu}"
        assert row.get_attribute("data-state") == "idle"
        meta = row.locator(".jp-VrunGPU-kernelMeta").inner_text()
        assert re.fullmatch(rf"idle \d+ s · {kernel_id[:8]} · vrungpu-1gpu", meta), meta
        holder = panel.locator(f'.jp-VrunGPU-gpu[data-gpu-index="{gpu}"] .jp-VrunGPU-holder')
        assert holder.inner_text() == f"held by kernel {kernel_id[:8]} (session lab-sidebar)"
        lab_page.shot("labextension-kernels.png")

        row.locator("button.jp-VrunGPU-kernelStop").click()
        dialog = lab_page.page.locator(".jp-Dialog")
        dialog.wait_for(timeout=10_000)
        assert "Stop session lab-sidebar?" in dialog.inner_text()
        lab_page.shot("labextension-kernel-confirm.png")
        dialog.locator("button.jp-mod-accept").click()
        row.wait_for(state="detached", timeout=15_000)
        assert_kernel_gone(gateway.api, kernel)
        wait_for(lambda: holder.inner_text() == "idle", 15, 0.1, f"GPU {gpu} shown as free")
        lab_page.shot("labextension-kernel-stopped.png")
        lab_page.assert_no_errors()


@pytest.mark.browser
def test_open_dashboard_button_opens_gateway_dashboard(
    lab_page: WatchedPage, gateway: GatewayProcess
) -> None:
    panel = open_sidebar(lab_page)
    with lab_page.page.context.expect_page(timeout=15_000) as opened:
        panel.locator(".jp-VrunGPU-openDashboard").click()
    popup = opened.value
    popup.wait_for_load_state("domcontentloaded")
    assert popup.url.startswith(f"{gateway.url}/dashboard/")
    lab_page.assert_no_errors()


@pytest.mark.browser
def test_sidebar_shows_gateway_errors(
    new_page: Callable[..., WatchedPage],
    start_lab: Callable[..., JupyterProcess],
    tmp_path: Path,
) -> None:
    """With the gateway down, the panel says so (console errors for the 502s are expected)."""
    dead = start_lab(tmp_path, _dead_url(), "whatever")
    lp = new_page(viewport=(1400, 900))
    page = lp.page
    page.goto(f"{dead.url}lab?token={dead.token}", wait_until="domcontentloaded")
    tab = page.locator('.jp-SideBar.jp-mod-left li[data-id="vrungpu-panel"]')
    tab.wait_for(state="visible", timeout=90_000)
    tab.click()
    page.wait_for_selector(f'{PANEL}[data-state="error"]', timeout=30_000)
    status = page.locator(f"{PANEL} .jp-VrunGPU-status").inner_text()
    assert "unreachable" in status
    lp.shot("labextension-gateway-down.png")

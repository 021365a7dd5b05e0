"""Browser-test fixtures: Debian's Chromium under Playwright, pages that collect their console
errors, and one real gateway (``--gpus sim:2``) with one real JupyterLab for the session.

A test that needs no browser error asserts ``page.assert_no_errors()``; screenshots go to
``test-artifacts/``. Without ``/usr/bin/chromium`` or Python Playwright the browser tests skip;
without ``jupyter`` the JupyterLab ones do.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support import REPO, GatewayProcess, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "test-artifacts"
JUPYTER = shutil.which("jupyter", path=str(Path(sys.executable).parent)) or shutil.which("jupyter")
JUPYTER_TOKEN = "lab-test-token"


# --- the browser -----------------------------------------------------------------------


@dataclass
class WatchedPage:
    """A Playwright page in its own context, with the console errors and page errors it met."""

    page: Any
    errors: list[str]

    def shot(self, name: str, *, full_page: bool = False) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def assert_no_errors(self) -> None:
        self.page.wait_for_timeout(250)  # let Playwright deliver any pending console events
        assert self.errors == []


def watch_errors(page: Any) -> list[str]:
    """The list that collects `page`'s console errors and uncaught page errors from now on."""
    errors: list[str] = []

    def on_console(msg: Any) -> None:
        if msg.type == "error":
            errors.append(f"console: {msg.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    return errors


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless /usr/bin/chromium, launched once; skips without it or without Playwright."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def new_page(browser: Any) -> Iterator[Callable[..., WatchedPage]]:
    """Open watched pages, each in a fresh browser context; all are closed after the test."""
    contexts: list[Any] = []

    def open_page(
        *,
        viewport: tuple[int, int] = (1400, 900),
        timeout_ms: float | None = None,
        init_script: str | None = None,
    ) -> WatchedPage:
        context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        contexts.append(context)
        if timeout_ms is not None:
            context.set_default_timeout(timeout_ms)
        if init_script:
            context.add_init_script(init_script)
        page = context.new_page()
        return WatchedPage(page, watch_errors(page))

    yield open_page
    for context in contexts:
        context.close()


@pytest.fixture
def watched_page(new_page: Callable[..., WatchedPage]) -> WatchedPage:
    """One watched page (1400×900) in a fresh browser context."""
    return new_page()


# --- JupyterLab ------------------------------------------------------------------------


@dataclass
class JupyterProcess:
    """A `jupyter lab|server` subprocess; `url` is its root, e.g. http://127.0.0.1:PORT/."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    root: Path
    url: str = ""
    token: str = JUPYTER_TOKEN
    auth: dict[str, str] = field(default_factory=dict)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return requests.get(self.url + path, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _jupyter_env(base: Path, gateway_url: str, gateway_token: str | None) -> dict[str, str]:
    """Isolated Jupyter dirs; the gateway (for the proxy and the kernels) comes from the
    environment, and kernels show ipywidgets panels."""
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(base / "config"),
        "JUPYTER_DATA_DIR": str(base / "data"),
        "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
        "JUPYTER_PLATFORM_DIRS": "1",
        "VRUNGPU_CONFIG": str(base / "no-vrungpu-config.json"),
        "VRUNGPU_URL": gateway_url,
        "VRUNGPU_WIDGETS": "on",
    }
    env.pop("VRUNGPU_TOKEN", None)
    if gateway_token:
        env["VRUNGPU_TOKEN"] = gateway_token
    return env


def _quiet_lab_settings(settings: Path) -> None:
    """Silence the "receive Jupyter news?" toast that would cover the page."""
    notification = settings / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True, exist_ok=True)
    (notification / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )


def start_jupyter(
    base: Path, gateway_url: str, gateway_token: str | None, app: str = "lab"
) -> JupyterProcess:
    """Start `jupyter <app>` on a free port and wait until its API answers."""
    for sub in ("root", "config", "data", "runtime", "settings", "workspaces"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    args = [
        JUPYTER or "jupyter",
        app,
        "--allow-root",
        "--no-browser",
        "--ip=127.0.0.1",
        "--port=0",
        f"--IdentityProvider.token={JUPYTER_TOKEN}",
        f"--ServerApp.root_dir={base / 'root'}",
    ]
    if app == "lab":
        _quiet_lab_settings(base / "settings")
        args += [
            f"--LabApp.user_settings_dir={base / 'settings'}",
            f"--LabApp.workspaces_dir={base / 'workspaces'}",
            # window.jupyterapp, as Galata has it: tests run JupyterLab commands by id
            "--LabApp.expose_app_in_browser=True",
        ]
    log_path = base / f"jupyter-{app}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_jupyter_env(base, gateway_url, gateway_token),
            cwd=base,
        )
    jp = JupyterProcess(proc=proc, log_path=log_path, root=base / "root")
    jp.auth = {"Authorization": f"token {JUPYTER_TOKEN}"}
    info = wait_for(lambda: _runtime_info(jp, base / "runtime"), 90, 0.2, f"jupyter {app}")
    assert info is not None
    jp.url = f"http://127.0.0.1:{info['port']}/"
    wait_for(lambda: _answers(jp), 30, 0.2, f"jupyter {app} /api/status")
    return jp


def _runtime_info(jp: JupyterProcess, runtime: Path) -> dict[str, Any] | None:
    if jp.proc.poll() is not None:
        raise AssertionError(f"jupyter exited with {jp.proc.returncode}:\n{jp.log()}")
    for path in runtime.glob("jpserver-*.json"):
        try:
            return json.loads(path.read_text())
        except ValueError:  # being written
            return None
    return None


def _answers(jp: JupyterProcess) -> bool:
    try:
        return jp.get("api/status", headers=jp.auth, timeout=5).status_code == 200
    except requests.ConnectionError:
        return False


def stop_jupyter(jp: JupyterProcess) -> None:
    if jp.proc.poll() is None:
        jp.proc.send_signal(signal.SIGTERM)  # a clean shutdown, without SIGINT's prompt
        try:
            jp.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            jp.proc.kill()
            jp.proc.wait()


@pytest.fixture(scope="session")
def jupyter() -> str:
    """The `jupyter` command next to this Python (skips without it or without JupyterLab)."""
    if JUPYTER is None:
        pytest.skip("jupyter is not installed")
    pytest.importorskip("jupyterlab", reason="jupyterlab is not installed")
    return JUPYTER


@pytest.fixture
def start_lab(jupyter: str) -> Iterator[Callable[..., JupyterProcess]]:
    """Start extra `jupyter lab|server` processes, e.g. against a dead gateway; stopped after
    the test. Arguments as `start_jupyter`'s."""
    started: list[JupyterProcess] = []

    def start(
        base: Path, gateway_url: str, gateway_token: str | None, app: str = "lab"
    ) -> JupyterProcess:
        started.append(start_jupyter(base, gateway_url, gateway_token, app))
        return started[-1]

    yield start
    for jp in started:
        stop_jupyter(jp)


@pytest.fixture(scope="session")
def lab_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The gateway the session's JupyterLab (its proxy and its kernels) talks to."""
    gw = GatewayProcess(tmp_path_factory.mktemp("lab-gateway"), gpus="sim:2").start()
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def lab(
    jupyter: str, lab_gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JupyterProcess]:
    """One `jupyter lab` for the session, with VRUNGPU_URL/VRUNGPU_TOKEN of `lab_gateway`."""
    jp = start_jupyter(tmp_path_factory.mktemp("lab"), lab_gateway.url, lab_gateway.token)
    yield jp
    stop_jupyter(jp)

"""The web dashboard (`/dashboard/`) in Debian's headless Chromium against a real gateway.

One gateway (``--gpus sim:2``, with a token) serves the module. Every test opens a fresh
browser context, collects console errors and page errors and asserts there are none, and
leaves screenshots in ``test-artifacts/``. The wrong-token test needs no filter: the page
checks its token with ``GET /dashboard/session``, which answers 200 either way, so Chromium
never logs a failed (401) request.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

from tests.kernel_helpers import assert_kernel_gone, session_kernel
from tests.model_helpers import register_plain
from tests.support import TOKEN, Gate, GatewayProcess, wait_for

if TYPE_CHECKING:
    from tests.browser.conftest import WatchedPage

TERMINAL = ("completed", "failed", "cancelled")

PROGRESS_CODE = """\
import time
for i in range(1, 11):
    time.sleep(0.5)
    print(f"[PROGRESS:{i * 10}:step {i}]", flush=True)
print("finished")
"""
LONG_CODE = """\
import time
for i in range(600):
    print(f"tick {i}", flush=True)
    time.sleep(0.1)
"""

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = sync_api.expect
expect.set_options(timeout=20_000)

pytestmark = pytest.mark.browser


# --- fixtures --------------------------------------------------------------------------
# The browser and its watched pages are tests/browser/conftest.py's.


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path_factory.mktemp("dashboard-gw"), gpus="sim:2").start()
    yield gw
    gw.stop()


@dataclass
class Dashboard:
    view: WatchedPage
    base: str

    @property
    def page(self) -> Any:
        return self.view.page

    @property
    def errors(self) -> list[str]:
        return self.view.errors

    def open(self, hash_: str = "", *, token: str | None = TOKEN) -> None:
        query = f"?token={token}" if token is not None else ""
        self.page.goto(f"{self.base}/dashboard/{query}{hash_}")

    def go(self, hash_: str) -> None:
        self.page.evaluate("h => { location.hash = h; }", hash_)

    def shot(self, name: str) -> None:
        self.view.shot(f"dashboard-{name}.png", full_page=True)

    def row(self, name: str) -> Any:
        title = self.page.locator(".task-title", has_text=name)
        return self.page.locator("tr.task-row", has=title)


def new_dashboard(
    new_page: Callable[..., WatchedPage], gateway: GatewayProcess, transport: str | None
) -> Dashboard:
    # force the WebSocket or the REST polling fallback
    force = f"sessionStorage.setItem('vrungpu.transport', '{transport}')" if transport else None
    view = new_page(viewport=(1440, 1000), timeout_ms=20_000, init_script=force)
    return Dashboard(view, gateway.url)


@pytest.fixture
def dash(new_page: Callable[..., WatchedPage], gateway: GatewayProcess) -> Dashboard:
    return new_dashboard(new_page, gateway, None)


# --- tests -----------------------------------------------------------------------------


def test_loads_with_the_token_and_shows_two_gpus(dash: Dashboard, gateway: GatewayProcess) -> None:
    dash.open()
    page = dash.page
    cards = page.locator("[data-gpu-index]")
    expect(cards).to_have_count(2)
    expect(cards.nth(0).locator(".badge-sim")).to_be_visible()
    expect(cards.nth(1)).to_contain_text("Simulated GPU 1")
    expect(page.locator("#util-history path[data-series]")).to_have_count(2)
    expect(page.locator("#conn-status")).not_to_have_attribute("data-mode", "offline")
    # The token left the address bar for session storage.
    assert "token" not in page.url
    assert page.evaluate("sessionStorage.getItem('vrungpu.token')") == TOKEN
    page.wait_for_timeout(2500)  # a second sample for the history chart
    dash.shot("overview")
    wait_for(lambda: "/dashboard/?token=***" in gateway.log(), 10, what="the access log")
    access = [line for line in gateway.log().splitlines() if "tornado.access" in line]
    assert not any(TOKEN in line for line in access)
    assert dash.errors == []


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_a_job_from_the_form_shows_progress_and_its_log(
    new_page: Callable[..., WatchedPage], gateway: GatewayProcess, transport: str
) -> None:
    dash = new_dashboard(new_page, gateway, transport)
    page = dash.page
    dash.open("#/submit")
    expect(page.locator("#conn-status")).to_have_attribute("data-mode", transport)
    name = f"form-job-{transport}"
    page.fill("#submit-code", PROGRESS_CODE)
    page.fill("#submit-name", name)
    page.fill("#submit-timeout", "120")
    page.click("#submit-btn")
    row = dash.row(name)
    expect(row).to_have_count(1)
    task_id = row.get_attribute("data-task-id")

    seen: list[float] = []

    def finished() -> str | None:
        seen.append(float(row.locator(".progress").get_attribute("data-progress")))
        status = row.get_attribute("data-status")
        return status if status in TERMINAL else None

    assert wait_for(finished, 60, 0.1, "the row to finish") == "completed"
    expect(row.locator(".progress")).to_have_attribute("data-progress", "100")
    assert any(0 < p < 100 for p in seen), seen  # it moved on the way
    assert seen == sorted(seen), seen
    dash.shot(f"tasks-{transport}")

    row.click()
    page.wait_for_url(f"**#/task/{task_id}")
    log = page.locator("#task-log")
    expect(log).to_contain_text("finished")
    lines = page.locator("#task-log .log-line").all_inner_texts()
    assert lines == [f"[PROGRESS:{i * 10}:step {i}]" for i in range(1, 11)] + ["finished"]
    expect(page.locator("#task-status .badge")).to_have_attribute("data-status", "completed")
    expect(page.locator("#task-progress")).to_have_attribute("data-progress", "100")
    dash.shot(f"task-{transport}")
    assert gateway.api.task(task_id)["status"] == "completed"
    assert dash.errors == []


def test_opening_a_running_task_shows_its_whole_log_then_live_lines(
    dash: Dashboard, gateway: GatewayProcess
) -> None:
    task_id = gateway.api.submit(LONG_CODE, name="follow-me")
    wait_for(lambda: "tick 15" in gateway.api.task(task_id)["stdout"], 30, 0.1, "output")
    dash.open(f"#/task/{task_id}")
    log = dash.page.locator("#task-log")
    expect(log).to_contain_text("tick 0")  # the start, replayed
    expect(log).to_contain_text("tick 40")  # and lines printed after the page opened
    texts = dash.page.locator("#task-log .log-line").all_inner_texts()
    assert texts[:41] == [f"tick {i}" for i in range(41)]
    # The overview's GPU card names the task holding it.
    dash.go("#/")
    holder = dash.page.locator(f'[data-gpu-index] .gpu-task[data-task-id="{task_id}"]')
    expect(holder).to_contain_text("follow-me")
    dash.page.wait_for_timeout(2500)  # let the gauges settle
    dash.shot("overview-busy")
    gateway.api.post(f"/task/{task_id}/cancel")
    assert dash.errors == []


def test_a_long_job_is_cancelled_from_the_ui(dash: Dashboard, gateway: GatewayProcess) -> None:
    task_id = gateway.api.submit(LONG_CODE, name="long-job")
    gateway.api.wait_status(task_id, "running")
    dash.open(f"#/task/{task_id}")
    page = dash.page
    badge = page.locator("#task-status .badge")
    expect(badge).to_have_attribute("data-status", "running")
    expect(page.locator("#task-log")).to_contain_text("tick 3")
    page.click("#task-cancel")
    expect(page.locator(".modal")).to_be_visible()
    dash.shot("cancel-confirm")
    page.click("#confirm-ok")
    expect(badge).to_have_attribute("data-status", "cancelled")
    expect(page.locator("#task-cancel")).to_be_hidden()
    dash.shot("cancelled")
    assert gateway.api.task(task_id)["status"] == "cancelled"
    assert dash.errors == []


# A WebSocket that never opens, as behind a proxy that refuses the upgrade.
NO_WEBSOCKET = """
window.WebSocket = class {
  static CONNECTING = 0; static OPEN = 1; static CLOSING = 2; static CLOSED = 3;
  constructor() {
    this.readyState = 3;
    setTimeout(() => this.onclose && this.onclose({ code: 1006 }), 0);
  }
  send() {}
  close() {}
};
"""


def test_falls_back_to_polling_by_itself_when_the_websocket_fails(
    new_page: Callable[..., WatchedPage], gateway: GatewayProcess, gate: Gate
) -> None:
    view = new_page(viewport=(1440, 1000), timeout_ms=20_000, init_script=NO_WEBSOCKET)
    dash = Dashboard(view, gateway.url)  # nothing forced: the page chooses by itself
    code = "print('[PROGRESS:40:halfway]', flush=True)\n" + gate.code
    task_id = gateway.api.submit(code, name="polled-job")
    dash.open(f"#/task/{task_id}")
    page = dash.page
    expect(page.locator("#conn-status")).to_have_attribute("data-mode", "polling")
    badge = page.locator("#task-status .badge")
    expect(badge).to_have_attribute("data-status", "running")
    gate.open()  # the page learns of the end by polling alone
    expect(badge).to_have_attribute("data-status", "completed")
    assert dash.errors == []


def test_a_zip_project_is_uploaded_and_run(
    dash: Dashboard, gateway: GatewayProcess, tmp_path: Path
) -> None:
    archive = tmp_path / "proj.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("proj/helper.py", "GREETING = 'hello from helper'\n")
        zf.writestr("proj/train.py", "from helper import GREETING\nprint(GREETING, flush=True)\n")
    dash.open("#/submit")
    page = dash.page
    page.click("#mode-upload")
    page.set_input_files("#submit-file", str(archive))
    expect(page.locator("#submit-drop")).to_contain_text("proj.zip")
    page.fill("#submit-entry", "train.py")
    page.fill("#submit-name", "zip-job")
    page.select_option("#submit-device", "cpu")
    dash.shot("upload")
    page.click("#submit-btn")
    row = dash.row("zip-job")
    expect(row).to_have_attribute("data-status", "completed", timeout=60_000)
    expect(row.locator(".cell-device")).to_have_text("CPU")
    row.click()
    expect(page.locator("#task-log")).to_contain_text("hello from helper")
    assert dash.errors == []


def test_a_finished_task_is_deleted_from_the_ui(dash: Dashboard, gateway: GatewayProcess) -> None:
    task_id = gateway.api.submit("print('bye')", name="delete-me")
    gateway.api.wait_status(task_id, *TERMINAL)
    dash.open(f"#/task/{task_id}")
    page = dash.page
    expect(page.locator("#task-log")).to_contain_text("bye")
    page.click("#task-delete")
    page.click("#confirm-ok")
    page.wait_for_url("**#/tasks")
    expect(page.locator(f'tr.task-row[data-task-id="{task_id}"]')).to_have_count(0)
    assert gateway.api.get(f"/task/{task_id}").status_code == 404
    assert dash.errors == []


def test_task_filters_and_paging(dash: Dashboard, gateway: GatewayProcess) -> None:
    for task_id in [
        gateway.api.submit(f"print({i})", name=f"page-{i}", device="cpu") for i in range(12)
    ]:
        gateway.api.wait_status(task_id, *TERMINAL)
    dash.open("#/tasks")
    page = dash.page
    shown = page.locator(".table-wrap")
    page.select_option("#page-size", "10")
    page.click('[data-filter-status="completed"]')
    expect(shown).to_have_attribute("data-query", "limit=10&offset=0&status=completed")
    statuses = page.locator("tr.task-row").evaluate_all("rows => rows.map(r => r.dataset.status)")
    assert set(statuses) == {"completed"}
    total = int(gateway.api.get("/tasks?status=completed").headers["X-Total-Count"])
    assert total > 10
    expect(page.locator("#page-info")).to_have_text(f"1–10 of {total}")
    page.click("#page-next")
    expect(shown).to_have_attribute("data-query", "limit=10&offset=10&status=completed")
    expect(page.locator("#page-info")).to_have_text(f"11–{min(total, 20)} of {total}")
    page.click('[data-filter-status=""]')
    page.select_option("#filter-device", "cpu")
    expect(shown).to_have_attribute("data-query", "limit=10&offset=0&device=cpu")
    assert set(page.locator("tr.task-row .cell-device").all_inner_texts()) == {"CPU"}
    dash.shot("tasks-filtered")
    assert dash.errors == []


def test_models_tab_lists_versions_downloads_infers_and_deletes(
    dash: Dashboard, gateway: GatewayProcess
) -> None:
    first = register_plain(gateway.api, name="scaler", scale=2.0)
    second = register_plain(gateway.api, name="scaler", scale=3.0)
    dash.open("#/models")
    page = dash.page
    group = page.locator('tbody.model-group[data-model-name="scaler"]')
    expect(group.locator("tr.model-row")).to_have_count(2)
    expect(group).to_contain_text("2 versions")
    link = group.locator(f'tr[data-model-id="{first["model_id"]}"] [data-action="download"]')
    href = link.get_attribute("href")
    assert f"/model/{first['model_id']}/download?token=" in href
    assert requests.get(href, timeout=10).content == b"2.0"

    page.select_option("#infer-model", second["model_id"])
    page.fill("#infer-input", '{"x": [1, 2]}')
    page.click("#infer-run")
    result = page.locator("#infer-result")
    expect(result).to_contain_text('"y"', timeout=60_000)
    assert json.loads(result.inner_text())["y"] == [3.0, 6.0]
    dash.shot("models")

    group.locator(f'tr[data-model-id="{first["model_id"]}"] [data-action="delete-model"]').click()
    page.click("#confirm-ok")
    expect(group.locator("tr.model-row")).to_have_count(1)
    assert gateway.api.get(f"/model/{first['model_id']}").status_code == 404
    assert dash.errors == []


def test_kernels_tab_lists_a_session_and_stop_frees_its_gpu(
    dash: Dashboard, gateway: GatewayProcess
) -> None:
    with session_kernel(gateway.api, "dash-kernels") as kernel:
        kernel_id, [gpu] = kernel["id"], kernel["gpus"]
        dash.open()
        page = dash.page
        card = page.locator(f'[data-gpu-index="{gpu}"]')
        expect(card).to_have_attribute("data-holder-kind", "kernel")
        expect(card.locator(".gpu-holder")).to_contain_text("Held by")
        expect(card.locator(".gpu-holder a")).to_have_text(f"kernel {kernel_id[:8]}")
        expect(card.locator(".gpu-holder-detail")).to_have_text("(session dash-kernels)")
        dash.shot("kernel-gpu-card")

        page.click("#nav-kernels")
        row = page.locator(f'tr.kernel-row[data-kernel-id="{kernel_id}"]')
        expect(row.locator(".kernel-session")).to_have_text("dash-kernels")
        expect(row.locator(".kernel-gpus")).to_have_text(f"GPU {gpu}")
        expect(row).to_contain_text("vrungpu-1gpu")
        expect(row.locator(".kernel-state")).to_have_text("idle")
        expect(row.locator(".kernel-idle")).to_have_text(re.compile(r"^\d"))
        dash.shot("kernels")

        row.locator('[data-action="stop-kernel"]').click()
        expect(page.locator(".modal")).to_contain_text("Stop session dash-kernels?")
        page.click("#confirm-ok")
        expect(row).to_have_count(0)
        assert_kernel_gone(gateway.api, kernel)
        page.click("#nav-overview")
        expect(card).to_have_attribute("data-busy", "false")
        assert dash.errors == []


def test_a_wrong_token_shows_the_login_error(dash: Dashboard) -> None:
    dash.open(token="not-the-token")
    page = dash.page
    error = page.locator("#login-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("Wrong or missing token")
    expect(page.locator("[data-gpu-index]")).to_have_count(0)
    assert "token" not in page.url
    dash.shot("login-error")
    # Pasting the right token recovers without a reload.
    page.fill("#login-token", TOKEN)
    page.click("#login-submit")
    expect(page.locator("[data-gpu-index]")).to_have_count(2)
    expect(error).to_be_hidden()
    assert dash.errors == []  # no filter needed: the token probe never answers 401


def test_no_token_shows_the_login_panel(dash: Dashboard) -> None:
    dash.open(token=None)
    error = dash.page.locator("#login-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("?token=")
    expect(dash.page.locator("#login-token")).to_be_focused()
    assert dash.errors == []

"""Service routes, auth, CLI flags and the OpenAPI document against a real gateway."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable

import requests
from tornado.web import RequestHandler

from tests.support import TOKEN, Api, GatewayProcess
from vrungpu_gateway.api.openapi import build_spec
from vrungpu_gateway.app import route_table


def test_health_is_open_and_everything_else_needs_the_token(gateway: GatewayProcess) -> None:
    assert requests.get(gateway.url + "/health", timeout=5).json() == {"status": "ok"}
    for path in ("/", "/gpu", "/gpu/pool", "/stats", "/tasks", "/openapi.json", "/docs"):
        res = requests.get(gateway.url + path, timeout=5)
        assert res.status_code == 401, path
        assert res.json()["code"] == "unauthorized"
    wrong = requests.get(gateway.url + "/", headers={"Authorization": "token nope"}, timeout=5)
    assert wrong.status_code == 401
    for headers, params in (({"Authorization": f"Bearer {TOKEN}"}, {}), ({}, {"token": TOKEN})):
        assert (
            requests.get(gateway.url + "/", headers=headers, params=params, timeout=5).status_code
            == 200
        )


def test_root_reports_service_and_storage(api: Api, gateway: GatewayProcess) -> None:
    body = api.get("/").json()
    assert body["service"] == "VrunGPU" and body["status"] == "running"
    assert body["gpu_count"] == 2 and body["available_gpus"] == 2
    assert body["total_tasks"] == 0 and body["total_models"] == 0
    db_url = dict(zip(gateway.extra, gateway.extra[1:], strict=False)).get("--db-url")
    assert body["storage"]["database"] == db_url or body["storage"]["database"].endswith(
        "/vrungpu.db"
    )
    assert body["storage"]["workspaces"] == str((gateway.data_dir / "workspaces").resolve())


def test_gpu_routes_with_simulated_gpus(api: Api) -> None:
    gpus = api.get("/gpu").json()
    assert gpus["available"] is True and len(gpus["devices"]) == 2
    first = gpus["devices"][0]
    for key in (
        "index",
        "uuid",
        "name",
        "memory_total_mb",
        "memory_used_mb",
        "memory_free_mb",
        "utilization_percent",
        "temperature_c",
        "task_id",
    ):
        assert key in first
    assert first["simulated"] is True and first["task_id"] is None
    pool = api.get("/gpu/pool").json()
    assert pool == {
        "total_gpus": 2,
        "available_gpus": [0, 1],
        "busy_gpus": {},
        "allocations": {},
        "cpu_slots": 2,
        "cpu_busy": [],
    }


def test_stats_shape(api: Api) -> None:
    api.post("/run/sync", json={"code": "print(1)"})
    stats = api.get("/stats").json()
    assert stats["tasks"]["by_status"] == {"completed": 1}
    assert set(stats["tasks"]["avg_duration"]) == {"training"}
    assert stats["tasks"]["last_24h"] == 1
    assert stats["models"] == {"by_status": {}, "total": 0}
    assert stats["gpu"]["usage_count"] == {"0": 1}
    assert stats["gpu"]["current"]["total_gpus"] == 2


def test_unknown_route_is_json_404(api: Api) -> None:
    res = api.get("/nope")
    assert res.status_code == 404 and res.json()["code"] == "no_route"
    res = api.request("PATCH", "/tasks")
    assert res.status_code == 405 and "detail" in res.json()


def test_no_gpu_host_takes_cpu_slots(start_gateway: Callable[..., GatewayProcess]) -> None:
    api = start_gateway(gpus="none").api
    assert api.get("/gpu").json()["devices"] == []
    task = api.post(
        "/run/sync", json={"code": "import os; print(repr(os.environ['CUDA_VISIBLE_DEVICES']))"}
    ).json()
    assert task["status"] == "completed" and task["device"] == "cpu"
    assert task["stdout"].strip() == "''"
    for body in ({"code": "1", "device": "gpu"}, {"code": "1", "gpu_id": 0}):
        res = api.post("/run/async", json=body)
        assert res.status_code == 400 and res.json()["code"] == "no_gpu"


def test_no_auth_is_refused_off_loopback(tmp_path) -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "vrungpu_gateway",
            "--host",
            "0.0.0.0",
            "--no-auth",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 2
    assert "--no-auth is refused" in res.stderr and "Traceback" not in res.stderr


def test_no_auth_on_loopback_and_printed_url(start_gateway: Callable[..., GatewayProcess]) -> None:
    gw = start_gateway(token=None)
    assert requests.get(gw.url + "/", timeout=5).status_code == 200
    gw2 = start_gateway()
    banner = gw2.log()
    assert "/?token=<the token you gave>" in banner  # a given token is never repeated
    assert TOKEN not in banner


def test_generated_token_is_saved_and_reused(tmp_path) -> None:
    gw = GatewayProcess(tmp_path / "gen", token="").start()
    try:
        token = gw.token
        assert token and len(token) >= 48
        assert (gw.data_dir / "token").stat().st_mode & 0o777 == 0o600
        assert f"/?token={token}" in gw.log()
        assert requests.get(gw.url + "/", timeout=5).status_code == 401
        gw.restart()
        assert gw.token == token and gw.api.get("/").status_code == 200
    finally:
        gw.stop()


def test_openapi_lists_exactly_the_routes(api: Api) -> None:
    spec = api.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    served: dict[str, set[str]] = {}
    for pattern, handler in route_table():
        path = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern)
        path = re.sub(r"\(\.[*+]\)", "{path}", path).rstrip("$")
        methods = {
            m.lower()
            for m in handler.SUPPORTED_METHODS
            if getattr(handler, m.lower()) is not getattr(RequestHandler, m.lower())
        }
        served.setdefault(path, set()).update(methods)
    documented = {p: set(ops) for p, ops in spec["paths"].items()}
    assert documented == served
    assert set(build_spec()["paths"]) <= set(documented)


def test_docs_page_renders_the_spec(api: Api) -> None:
    page = api.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert "openapi.json" in page.text and "cdn" not in page.text.lower()


def test_the_documented_wire_shapes_are_what_the_api_sends(api: Api, tmp_path) -> None:
    """The OpenAPI schemas are generated from vrungpu_gateway/wire.py; the answers match them."""
    schemas = api.get("/openapi.json").json()["components"]["schemas"]

    def fields(name: str) -> set[str]:
        return set(schemas[name]["properties"])

    done = api.post("/run/sync", json={"code": "print('shape')"}).json()
    assert set(done) == fields("TaskDetail")
    assert set(api.get(f"/task/{done['task_id']}").json()) == fields("TaskDetail")
    assert set(api.get("/tasks").json()[0]) == fields("Task")
    accepted = api.post("/run/async", json={"code": "print(1)"}).json()
    assert set(accepted) == fields("TaskAccepted")
    api.wait_status(accepted["task_id"], "completed")
    (tmp_path / "m.pt").write_bytes(b"weights")
    with open(tmp_path / "m.pt", "rb") as fh:
        model = api.post("/model/register", files={"model_file": fh}, data={"name": "m"}).json()
    assert set(model) == fields("Model")
    assert set(api.get("/models").json()) == fields("ModelList")
    assert set(api.get("/models").json()["models"][0]) == fields("Model")
    assert schemas["RunRequest"]["required"] == ["code"]

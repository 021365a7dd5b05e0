"""Remote kernels against our gateway: kernelspecs, the REST model, channels, GPU accounting,
culling, queue timeout, restart survival and prespawned kernels."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tornado.httpclient

from tests.kernel_helpers import Channels
from tests.support import Api, Gate, GatewayProcess, pid_alive, shim_pids, wait_for


@pytest.fixture(scope="module")
def kgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One gateway (two simulated GPUs, at most 3 kernels) for the tests that can share it."""
    gw = GatewayProcess(tmp_path_factory.mktemp("kernels"), extra=["--max-kernels", "3"]).start()
    yield gw
    gw.stop()


def start_kernel(api: Api, name: str = "vrungpu-1gpu", **body: Any) -> dict[str, Any]:
    res = api.post("/api/kernels", json={"name": name, **body})
    assert res.status_code == 201, res.text
    return res.json()


def channels_url(gw: GatewayProcess, kernel_id: str) -> str:
    return gw.url.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"


def pool(api: Api) -> dict[str, Any]:
    return api.get("/gpu/pool").json()


def test_kernelspecs_cpu_and_each_gpu_count(kgw: GatewayProcess) -> None:
    specs = kgw.api.get("/api/kernelspecs").json()
    assert specs["default"] == "vrungpu-1gpu"
    assert set(specs["kernelspecs"]) == {"vrungpu-cpu", "vrungpu-1gpu", "vrungpu-2gpu"}
    one = specs["kernelspecs"]["vrungpu-1gpu"]
    assert one["name"] == "vrungpu-1gpu" and one["resources"] == {}
    assert one["spec"]["display_name"] == "Python 3 (VrunGPU, 1 GPU)"
    assert one["spec"]["language"] == "python" and one["spec"]["argv"]
    assert specs["kernelspecs"]["vrungpu-cpu"]["spec"]["display_name"] == "Python 3 (VrunGPU, CPU)"
    assert kgw.api.get("/api/kernelspecs/vrungpu-2gpu").json()["name"] == "vrungpu-2gpu"
    assert kgw.api.get("/api/kernelspecs/vrungpu-3gpu").status_code == 404


async def test_unknown_kernels_and_specs_answer_404(kgw: GatewayProcess) -> None:
    api = kgw.api
    res = api.post("/api/kernels", json={"name": "python3"})
    assert res.status_code == 404 and "vrungpu-cpu" in res.json()["detail"]
    assert api.post("/api/kernels", json={"name": "vrungpu-3gpu"}).status_code == 404
    for method, path in [
        ("GET", "/api/kernels/nope"),
        ("DELETE", "/api/kernels/nope"),
        ("POST", "/api/kernels/nope/interrupt"),
        ("POST", "/api/kernels/nope/restart"),
    ]:
        res = api.request(method, path)
        assert res.status_code == 404 and res.json()["code"] == "kernel_not_found", (path, res.text)
    with pytest.raises(tornado.httpclient.HTTPClientError) as err:
        await Channels.open(channels_url(kgw, "nope"), kgw.token)
    assert err.value.code == 404
    assert api.post("/api/kernels", json={"name": "vrungpu-1gpu", "gpu_id": 7}).status_code == 400
    assert api.post("/api/kernels", json={"env": {"CUDA_VISIBLE_DEVICES": "3"}}).status_code == 400
    assert api.get("/api/kernels", headers={"Authorization": "token wrong"}).status_code == 401


def test_session_get_or_create_filter_and_delete_frees_the_gpu(kgw: GatewayProcess) -> None:
    api = kgw.api
    first = start_kernel(api, session="analysis", gpu_id=1)
    assert first["session"] == "analysis" and first["gpus"] == [1] and first["device"] == "gpu"
    for key in ("id", "name", "last_activity", "execution_state", "connections", "created_at"):
        assert key in first
    again = api.post("/api/kernels", json={"name": "vrungpu-1gpu", "session": "analysis"})
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    assert [k["id"] for k in api.get("/api/kernels?session=analysis").json()] == [first["id"]]
    assert api.get("/api/kernels?session=other").json() == []
    assert pool(api)["allocations"] == {first["id"]: [1]}
    holder = api.get("/gpu").json()["devices"][1]["holder"]
    assert holder == {
        "kind": "kernel",
        "id": first["id"],
        "session": "analysis",
        "name": "vrungpu-1gpu",
    }
    assert api.delete(f"/api/kernels/{first['id']}").status_code == 204
    assert api.get(f"/api/kernels/{first['id']}").status_code == 404
    assert pool(api)["allocations"] == {} and api.get("/api/kernels").json() == []


async def test_channels_state_env_interrupt_and_bad_messages(kgw: GatewayProcess) -> None:
    api = kgw.api
    kernel = start_kernel(api, "vrungpu-cpu")
    ch = await Channels.open(channels_url(kgw, kernel["id"]), kgw.token)
    try:
        assert (await ch.execute("x = 41")).status == "ok"
        assert (await ch.execute("x + 1")).result() == "42"
        env = await ch.execute(
            "import os; print(repr(os.environ['CUDA_VISIBLE_DEVICES']), os.getcwd(), "
            "'VRUNGPU_TOKEN' in os.environ)"
        )
        workspace = kgw.data_dir.resolve() / "workspaces" / kernel["id"]
        assert env.stdout.split() == ["''", str(workspace), "False"]
        for bad in ["not json", "[1, 2]", json.dumps({"channel": "nowhere", "header": {}}), "{}"]:
            await ch.conn.write_message(bad)
        await ch.conn.write_message(b"\x00\x00\x00\x09garbage")
        info, _ = await ch.request("shell", "kernel_info_request", {})
        assert info["content"]["language_info"]["name"] == "python"
        sleeping = await ch.send("shell", "execute_request", {"code": SLEEP_CELL})
        await wait_for_output(ch, sleeping, "sleeping")
        assert api.get(f"/api/kernels/{kernel['id']}").json()["execution_state"] == "busy"
        assert api.post(f"/api/kernels/{kernel['id']}/interrupt").status_code == 204
        error = await reply_to(ch, sleeping)
        assert error["content"]["status"] == "error"
        assert error["content"]["ename"] == "KeyboardInterrupt"
        assert (await ch.execute("x")).result() == "41"  # the state lives on
        assert "client message dropped" in kgw.log()
    finally:
        ch.close()
        api.delete(f"/api/kernels/{kernel['id']}")


SLEEP_CELL = "import time\nprint('sleeping', flush=True)\ntime.sleep(60)"


async def wait_for_output(ch: Channels, msg_id: str, text: str) -> None:
    """Until the cell ``msg_id`` printed ``text`` (it runs user code now)."""
    while True:
        msg = await ch.next()
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            if text in msg["content"]["text"]:
                return


async def reply_to(ch: Channels, msg_id: str) -> dict[str, Any]:
    while True:
        msg = await ch.next()
        if msg["channel"] == "shell" and msg["parent_header"].get("msg_id") == msg_id:
            return msg

"""Remote kernels against our gateway: kernelspecs, the REST model, channels, GPU accounting,
culling, queue timeout, restart survival and prespawned kernels."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import tornado.httpclient

from tests.kernel_helpers import Channels, Executed
from tests.support import Api, Gate, GatewayProcess, pid_alive, shim_pids, wait_for
from vrungpu_gateway.engine.kernels.specs import placement_of
from vrungpu_gateway.engine.kernels.wire import BadMessage, from_client, to_client
from vrungpu_gateway.errors import InvalidRequest, NotFound


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
        "owner": "admin",
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
        await ch.printed(sleeping, "sleeping")
        assert api.get(f"/api/kernels/{kernel['id']}").json()["execution_state"] == "busy"
        assert api.post(f"/api/kernels/{kernel['id']}/interrupt").status_code == 204
        error = await ch.reply(sleeping)
        assert error["content"]["status"] == "error"
        assert error["content"]["ename"] == "KeyboardInterrupt"
        assert (await execute_after_error(ch, "x")).result() == "41"  # the state lives on
        assert "client message dropped" in kgw.log()
    finally:
        await ch.close()
        api.delete(f"/api/kernels/{kernel['id']}")


async def execute_after_error(ch: Channels, code: str) -> Executed:
    """ipykernel aborts requests that reach it just after an error (stop_on_error): retry."""
    for _ in range(50):
        executed = await ch.execute(code)
        if executed.status != "aborted":
            return executed
        await asyncio.sleep(0.1)
    raise AssertionError("every execute was aborted")


SLEEP_CELL = "import time\nprint('sleeping', flush=True)\ntime.sleep(60)"


def test_over_max_kernels_is_409_with_the_limit(kgw: GatewayProcess) -> None:
    api = kgw.api
    started = [start_kernel(api, name)["id"] for name in ("vrungpu-cpu", *["vrungpu-1gpu"] * 2)]
    try:
        res = api.post("/api/kernels", json={"name": "vrungpu-cpu"})
        assert res.status_code == 409, res.text
        assert res.json()["code"] == "too_many_kernels" and "at most 3" in res.json()["detail"]
        same = api.post("/api/kernels", json={"name": "vrungpu-cpu", "session": "absent"})
        assert same.status_code == 409
    finally:
        for kernel_id in started:
            assert api.delete(f"/api/kernels/{kernel_id}").status_code == 204


def test_a_job_waits_for_the_kernels_gpu_until_it_stops(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    gw = start_gateway(gpus="sim:1")
    api = gw.api
    kernel = start_kernel(api, session="holder")
    task_id = api.submit("print('ran')", gpu_id=0)
    queued = api.wait_status(task_id, "queued")
    assert queued["queue_position"] == 1
    device = api.get("/gpu").json()["devices"][0]
    assert device["holder"]["kind"] == "kernel" and device["holder"]["session"] == "holder"
    assert pool(api)["busy_gpus"] == {kernel["id"]: 0}
    assert api.task(task_id)["status"] == "queued"  # still: the kernel holds the GPU
    assert api.delete(f"/api/kernels/{kernel['id']}").status_code == 204
    done = api.wait_status(task_id, "completed", timeout_s=60)
    assert done["gpu_id"] == 0 and "ran" in done["stdout"]


async def test_idle_kernels_are_culled_busy_ones_are_not(
    start_gateway: Callable[..., GatewayProcess], gate: Gate
) -> None:
    gw = start_gateway(extra=["--kernel-idle-timeout", "2"])
    api = gw.api
    busy = start_kernel(api, session="busy", gpu_id=0)
    start_kernel(api, session="idle", gpu_id=1)
    ch = await Channels.open(channels_url(gw, busy["id"]), gw.token)
    try:
        cell = await ch.send("shell", "execute_request", {"code": gate.code + "print('through')"})
        task_id = api.submit("print('job ran')", gpu_id=1)  # waits for the idle kernel's GPU
        done = await asyncio.to_thread(api.wait_status, task_id, "completed", timeout_s=60)
        assert done["gpu_id"] == 1
        assert [k["id"] for k in api.get("/api/kernels").json()] == [busy["id"]]
        assert "idle for 2 s (--kernel-idle-timeout): culled" in gw.log()
        url = f"/api/kernels/{busy['id']}"
        model = await asyncio.to_thread(
            wait_for, lambda: (m := api.get(url).json())["idle_s"] > 4 and m
        )
        assert model["execution_state"] == "busy"  # idle far past the timeout, yet kept
        gate.open()
        await ch.reply(cell)
        await asyncio.to_thread(
            wait_for, lambda: api.get("/api/kernels").json() == [], 30, what="the culling"
        )
        assert pool(api)["allocations"] == {}
    finally:
        await ch.close()


def test_a_start_that_gets_no_gpu_in_time_is_503_naming_the_holder(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    gw = start_gateway(gpus="sim:1", extra=["--kernel-queue-timeout", "1"])
    api = gw.api
    holder = start_kernel(api, session="alpha")
    res = api.post("/api/kernels", json={"name": "vrungpu-1gpu", "session": "beta"})
    assert res.status_code == 503, res.text
    body = res.json()
    assert body["code"] == "no_free_gpu"
    assert f"GPU 0 held by kernel {holder['id']} (session alpha)" in body["detail"]
    assert "\n" not in body["detail"]
    assert [k["id"] for k in api.get("/api/kernels").json()] == [holder["id"]]
    assert pool(api)["allocations"] == {holder["id"]: [0]}  # the failed start holds nothing


@pytest.mark.slow
async def test_kernels_survive_a_gateway_restart(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    gw = start_gateway()
    api = gw.api
    kept = start_kernel(api, session="kept", gpu_id=1)
    lost = start_kernel(api, "vrungpu-cpu", session="lost")
    ch = await Channels.open(channels_url(gw, kept["id"]), gw.token)
    assert (await ch.execute("x = 41")).status == "ok"
    await ch.close()
    gw.stop(end_jobs=False)  # --on-stop leave: the kernels run on
    shims = shim_pids(gw.data_dir)
    assert {kept["id"], lost["id"]} <= set(shims)
    os.kill(shims[lost["id"]], signal.SIGTERM)  # one dies while the gateway is down
    wait_for(lambda: not pid_alive(shims[lost["id"]]), 30, what="the lost kernel's end")
    gw.start()
    api = gw.api
    kernels = api.get("/api/kernels").json()
    assert [(k["id"], k["session"], k["gpus"]) for k in kernels] == [(kept["id"], "kept", [1])]
    assert pool(api)["allocations"] == {kept["id"]: [1]}
    assert f"kernel {lost['id']} (session lost): died while the gateway was down" in gw.log()
    again = api.post("/api/kernels", json={"name": "vrungpu-1gpu", "session": "kept"})
    assert again.status_code == 200 and again.json()["id"] == kept["id"]
    ch = await Channels.open(channels_url(gw, kept["id"]), gw.token)
    try:
        assert (await ch.execute("x + 1")).result() == "42"
    finally:
        await ch.close()
    assert api.post(f"/api/kernels/{kept['id']}/restart").json()["gpus"] == [1]
    ch = await Channels.open(channels_url(gw, kept["id"]), gw.token)
    try:
        assert (await ch.execute("'x' in globals()")).result() == "False"
    finally:
        await ch.close()


@pytest.mark.slow
async def test_prespawned_kernel_is_claimed_with_its_gpu(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    gw = start_gateway(extra=["--prespawn-kernels", "1", "--preload", "colorsys"])
    wait_for(lambda: "spare kernel" in gw.log(), 60, what="a spare kernel")
    api = gw.api
    kernel = start_kernel(api, gpu_id=1, env={"MY_SETTING": "on"})
    assert f"spare kernel {kernel['id']} ready" in gw.log()  # a spare became this kernel
    ch = await Channels.open(channels_url(gw, kernel["id"]), gw.token)
    try:
        probe = await ch.execute(
            "import os, sys\nprint(os.environ['CUDA_VISIBLE_DEVICES'], os.environ['MY_SETTING'], "
            "'colorsys' in sys.modules, os.getcwd() == os.environ['VRUNGPU_WORKSPACE'])"
        )
        assert probe.stdout.split() == ["1", "on", "True", "True"]
    finally:
        await ch.close()
    wait_for(lambda: gw.log().count("spare kernel") >= 2, 60, what="a replacement spare")
    assert api.get("/api/kernels").json()[0]["id"] == kernel["id"]  # spares are not listed


# -- the parts that need no process ---------------------------------------------------------------
def test_client_messages_parse_or_say_why() -> None:
    header = {"msg_id": "m1", "msg_type": "execute_request"}
    channel, msg = from_client(json.dumps({"header": header, "content": {"code": "1"}}))
    assert channel == "shell" and msg["parent_header"] == {} and msg["buffers"] == []
    for raw, why in [
        ("nope", "not JSON"),
        ("[]", "JSON object"),
        (json.dumps({"channel": "iopub", "header": header}), "no channel"),
        (json.dumps({"header": {"msg_id": "m"}}), "msg_type"),
        (json.dumps({"header": {"msg_type": "x"}}), "msg_id"),
        (json.dumps({"header": header, "content": []}), "content"),
        (b"\x00\x00", "binary"),
    ]:
        with pytest.raises(BadMessage, match=why):
            from_client(raw)


def test_messages_with_buffers_use_jupyter_servers_binary_framing() -> None:
    msg = {"header": {"msg_id": "m", "msg_type": "comm_msg"}, "parent_header": {}}
    msg |= {"metadata": {}, "content": {"data": {}}, "buffers": [b"\x00\x01", b"xyz"]}
    framed = to_client("shell", msg)
    assert isinstance(framed, bytes)
    channel, back = from_client(framed)
    assert channel == "shell" and back["buffers"] == [b"\x00\x01", b"xyz"]
    assert back["header"] == msg["header"]
    text = to_client("iopub", {**msg, "buffers": []})
    assert isinstance(text, str) and json.loads(text)["channel"] == "iopub"


def test_kernelspec_placements() -> None:
    assert placement_of("vrungpu-cpu", gpu_count=0).device == "cpu"
    assert placement_of("vrungpu-2gpu", gpu_count=2).gpus == 2
    assert placement_of("vrungpu-1gpu", gpu_count=2, gpu_id=1).gpu_id == 1
    for name, gpus in [("vrungpu-1gpu", 0), ("vrungpu-0gpu", 2), ("python3", 2)]:
        with pytest.raises(NotFound):
            placement_of(name, gpu_count=gpus)
    with pytest.raises(InvalidRequest):
        placement_of("vrungpu-2gpu", gpu_count=2, gpu_id=0)

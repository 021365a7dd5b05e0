"""``--backend ray`` against a real local Ray head with two declared GPUs (no GPU needed).

One Ray head and one gateway serve the module (Ray starts in ~10 s); each test leaves no task
running. Jobs print their pid so a test can check, on this one-machine cluster, that cancel and
timeout leave no process behind.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel_helpers import Channels, Executed, assert_kernel_gone, session_kernel
from tests.model_helpers import infer, register_plain, wait_no_workers, workers
from tests.support import Api, Gate, GatewayProcess, pid_alive, wait_for
from tests.test_kernels import SLEEP_CELL, execute_after_error
from tests.test_ws import Ws, is_end, subscribed_lines
from vrungpu_gateway.engine.shim import truncation_notice

pytest.importorskip("ray", reason="--backend ray needs the ray package (the ray extra)")
pytestmark = pytest.mark.slow  # a Ray head starts in 10-60 s

RAY_ENV = {"RAY_AUTH_MODE": "disabled"}  # Ray 2.60 turns token auth on by default
# The raylet waits this long for its agents (30 s by default; a loaded machine needs more).
HEAD_ENV = {**RAY_ENV, "RAY_agent_register_timeout_ms": "120000"}
RAY_CLI = Path(sys.executable).parent / "ray"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ray(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RAY_CLI), *args],
        env={**os.environ, **HEAD_ENV},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def _processes_under(marker: str) -> list[int]:
    """This head's processes: those whose command line names ``marker`` (its temp dir: GCS,
    raylet, monitors), and their descendants (agents and workers rename themselves)."""
    named: set[int] = set()
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                pid = int(entry.name)
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    named.add(pid)
                stat = (entry / "stat").read_text()
                parent[pid] = int(stat.rsplit(")", 1)[1].split()[1])
    found, grown = set(named), True
    while grown:
        children = {pid for pid, ppid in parent.items() if ppid in found} - found
        found |= children
        grown = bool(children)
    return sorted(found)


def _stop_head(temp: str) -> None:
    """Kill this head's processes by pid (never `ray stop`, which stops every Ray cluster on
    the machine, a developer's own included)."""
    for pid in _processes_under(temp):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def ray_cluster(gpus_per_node: tuple[int, ...] = (2,)) -> Iterator[str]:
    """A Ray head on a free port (its address), with 2 GPUs and 4 CPUs declared by default;
    each further entry of ``gpus_per_node`` is one more node on this machine, joined to the
    head (its processes share the head's temp dir). Always stopped after, with whatever it left
    behind."""
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="vr-ray-")  # short: Ray's socket paths must fit 107 bytes
    args = ["--num-cpus=4", "--disable-usage-stats"]
    head = [f"--num-gpus={gpus_per_node[0]}", "--include-dashboard=false", f"--temp-dir={temp}"]
    try:
        for _ in range(3):  # Ray gives its raylet 30 s: a loaded machine may need more tries
            started = _ray("start", "--head", f"--port={port}", *head, *args)
            if started.returncode == 0:
                break
            _stop_head(temp)
        assert started.returncode == 0, started.stderr[-2000:]
        for gpus in gpus_per_node[1:]:
            joined = _ray("start", f"--address=127.0.0.1:{port}", f"--num-gpus={gpus}", *args)
            assert joined.returncode == 0, joined.stderr[-2000:]
        yield f"127.0.0.1:{port}"
    finally:
        _stop_head(temp)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    if not RAY_CLI.exists():
        pytest.skip(f"the ray command is not installed beside {sys.executable}")
    with ray_cluster() as address:
        yield address


@pytest.fixture(scope="module")
def ray_gateway(
    ray_head: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(
        tmp_path_factory.mktemp("ray-gateway"),
        extra=["--backend", "ray", "--ray-address", ray_head, "--max-log-mb", "1"],
        env=RAY_ENV,
    )
    yield gw.start()
    gw.stop()


@pytest.fixture
def api(ray_gateway: GatewayProcess) -> Api:
    return ray_gateway.api


def _stdout(api: Api, task_id: str) -> str:
    return "\n".join(api.get(f"/task/{task_id}/logs", params={"stream": "stdout"}).json()["lines"])


def _printed(api: Api, task_id: str, key: str) -> str:
    """The value a job printed as ``key=value`` (waiting until it did)."""

    def find() -> str | None:
        for line in _stdout(api, task_id).splitlines():
            if line.startswith(f"{key}="):
                return line.split("=", 1)[1]
        return None

    return str(wait_for(find, 60, what=f"task {task_id} to print {key}"))


PRINT_IDS = (
    "import os, subprocess, sys\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
    "print(f'pid={os.getpid()}', flush=True)\n"
    "print(f'child={child.pid}', flush=True)\n"
    "print(f'cuda={os.environ[\"CUDA_VISIBLE_DEVICES\"]}', flush=True)\n"
)


# -- the cluster's GPUs, sync/async/project runs ---------------------------------------------
def test_gpus_are_the_clusters_listed_per_node(api: Api) -> None:
    gpus = api.get("/gpu").json()
    assert gpus["kind"] == "ray" and gpus["count"] == 2
    assert [d["index"] for d in gpus["devices"]] == [0, 1]
    assert all(d["node_id"] and d["node_ip"] for d in gpus["devices"])
    assert api.get("/").json()["gpu_kind"] == "ray"
    (node,) = api.get("/gpu/pool").json()["nodes"]  # the one node of the test cluster
    assert node["gpus"] == [0, 1] and node["node_id"] == gpus["devices"][0]["node_id"]


def test_run_sync_on_a_ray_actor_brings_its_files_back(api: Api) -> None:
    code = (
        "import os\nprint('cuda=' + os.environ['CUDA_VISIBLE_DEVICES'])\n"
        "print('ws=' + os.environ['VRUNGPU_WORKSPACE'])\n"
        "os.makedirs('out', exist_ok=True)\nopen('out/result.txt', 'w').write('42')\n"
    )
    task = api.post("/run/sync", json={"code": code}).json()
    assert task["status"] == "completed", task
    lines = dict(line.split("=", 1) for line in task["stdout"].splitlines())
    assert lines["cuda"] in ("0", "1")
    assert "/workspaces/" not in lines["ws"]  # it ran in its actor's copy, not the gateway's
    files = api.get(f"/task/{task['task_id']}/files").json()
    assert "out/result.txt" in str(files)
    got = api.get(f"/task/{task['task_id']}/files/out/result.txt")
    assert got.status_code == 200 and got.content == b"42"
    assert lines["ws"].startswith(tempfile.gettempdir())
    assert not Path(lines["ws"]).exists()  # the actor removed its copy at the end


def test_a_two_gpu_job_gets_both_gpus_from_ray(api: Api) -> None:
    code = "import os\nprint(os.environ['CUDA_VISIBLE_DEVICES'])\n"
    task = api.post("/run/sync", json={"code": code, "gpus": 2}).json()
    assert task["status"] == "completed" and task["gpu_ids"] == [0, 1], task
    assert sorted(task["stdout"].strip().split(",")) == ["0", "1"]


def test_async_and_project_runs(api: Api) -> None:
    code = "import os, sys\nprint('cuda=' + os.environ['CUDA_VISIBLE_DEVICES'])\nsys.exit(3)"
    task_id = api.submit(code, device="cpu")
    task = api.wait_status(task_id, "failed", timeout_s=60)
    assert task["return_code"] == 3 and task["failure_reason"] == "exit_code"
    assert _stdout(api, task_id) == "cuda="  # a CPU job's actor holds no GPU, and sees none

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("train.py", "from lib.helper import VALUE\nprint('value', VALUE)\n")
        archive.writestr("lib/__init__.py", "")
        archive.writestr("lib/helper.py", "VALUE = 7\n")
    res = api.post(
        "/run/project",
        files={"file": ("p.zip", buffer.getvalue())},
        data={"entry_point": "train.py"},
    )
    assert res.status_code == 202, res.text
    project = api.wait_status(res.json()["task_id"], "completed", "failed", timeout_s=60)
    assert project["status"] == "completed", project
    assert _stdout(api, project["task_id"]) == "value 7"


# -- two GPUs, a third queued; cancel and timeout ----------------------------------------------
def test_two_jobs_get_distinct_gpus_and_a_third_waits(api: Api, tmp_path: Path) -> None:
    gate = Gate(tmp_path / "go")
    code = "import os\nprint('cuda=' + os.environ['CUDA_VISIBLE_DEVICES'], flush=True)\n"
    try:
        ids = [api.submit(code + gate.code) for _ in range(3)]
        first = {_printed(api, task_id, "cuda") for task_id in ids[:2]}
        assert first == {"0", "1"}
        third = api.task(ids[2])
        assert third["status"] == "queued" and third["queue_position"] == 1
    finally:
        gate.open()
    for task_id in ids:
        task = api.wait_status(task_id, "completed", "failed", timeout_s=60)
        assert task["status"] == "completed", task


def test_cancel_and_timeout_leave_no_process(api: Api) -> None:
    hang = PRINT_IDS + "import time\ntime.sleep(600)\n"
    cancelled = api.submit(hang)
    pids = [int(_printed(api, cancelled, key)) for key in ("pid", "child")]
    assert all(pid_alive(pid) for pid in pids)
    assert api.post(f"/task/{cancelled}/cancel").status_code == 200
    task = api.wait_status(cancelled, "cancelled", timeout_s=60)
    assert task["failure_reason"] == "cancelled"
    wait_for(lambda: not any(pid_alive(pid) for pid in pids), 30, what="cancelled job to end")

    timed = api.submit(hang, timeout=3)
    pids = [int(_printed(api, timed, key)) for key in ("pid", "child")]
    task = api.wait_status(timed, "failed", timeout_s=60)
    assert task["failure_reason"] == "timeout" and task["error"] == "Timeout after 3 seconds"
    wait_for(lambda: not any(pid_alive(pid) for pid in pids), 30, what="timed-out job to end")


def test_cancel_while_ray_has_not_placed_the_actor(ray_head: str, api: Api, tmp_path: Path) -> None:
    """Another user of the cluster holds both GPUs: our scheduler admits the job, Ray holds its
    actor back; a cancel ends it there, and the actor never runs nor keeps a GPU."""
    extra = ["--backend", "ray", "--ray-address", ray_head]
    other = GatewayProcess(tmp_path / "other", extra=extra, env=RAY_ENV).start()
    gate, marker = Gate(tmp_path / "go"), tmp_path / "ran"
    try:
        hog = other.api.submit("print('hog', flush=True)\n" + gate.code, gpus=2)
        wait_for(lambda: _stdout(other.api, hog) == "hog", 60, what="the other job to run")
        waiting = api.submit(f"open({str(marker)!r}, 'w').write('ran')\n")
        api.wait_status(waiting, "running")
        assert api.post(f"/task/{waiting}/cancel").status_code == 200
        task = api.wait_status(waiting, "cancelled", timeout_s=60)
        assert task["failure_reason"] == "cancelled"
    finally:
        gate.open()
        other.api.wait_status(hog, "completed", "failed", timeout_s=60)
        other.stop()
    both = api.post("/run/sync", json={"code": "print('both')", "gpus": 2}).json()
    assert both["status"] == "completed", both
    assert not marker.exists()


# -- live logs, models ------------------------------------------------------------------------
def test_live_logs_are_exact_over_the_websocket(
    ray_gateway: GatewayProcess, api: Api, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "go")
    part = (
        "import sys\nfor i in range({a}, {b}):\n    print(i, flush=True)\n"
        "    print('e', i, file=sys.stderr, flush=True)\n"
    )
    code = part.format(a=0, b=300) + gate.code + part.format(a=300, b=3000)
    code += "print('café no newline', end='')\n"
    ws = Ws(ray_gateway)
    try:
        ws.recv()
        task_id = api.submit(code, device="cpu")
        ws.send(type="subscribe", task_id=task_id, offset=0)
        wait_for(lambda: "299" in _stdout(api, task_id), 60, what="the first lines")
        gate.open()
        seen = ws.until(is_end(task_id), 60)
    finally:
        gate.open()
        ws.close()
    expected = [str(i) for i in range(3000)] + ["café no newline"]
    assert subscribed_lines(seen, task_id) == expected
    assert subscribed_lines(seen, task_id, "stderr") == [f"e {i}" for i in range(3000)]
    log = ray_gateway.data_dir / "logs" / f"{task_id}.stdout.log"
    assert log.read_bytes() == ("\n".join(expected[:-1]) + "\ncafé no newline").encode()


def test_a_log_past_max_log_mb_is_cut_with_the_notice(
    ray_gateway: GatewayProcess, api: Api
) -> None:
    code = "import sys\nfor _ in range(3):\n    sys.stdout.write('x' * 2**19 + '\\n')\n"
    task = api.post("/run/sync", json={"code": code, "device": "cpu"}).json()
    assert task["status"] == "completed" and task["stdout_log_truncated"], task
    assert not task["stderr_log_truncated"]
    data = (ray_gateway.data_dir / "logs" / f"{task['task_id']}.stdout.log").read_bytes()
    notice = truncation_notice(2**20)
    assert data == ((b"x" * 2**19 + b"\n") * 3)[: 2**20] + notice


def test_save_model_registers_what_the_ray_job_left(api: Api) -> None:
    code = "open('model.pt', 'wb').write(b'trained on ray')\nprint('saved')\n"
    task = api.post(
        "/run/sync", json={"code": code, "save_model": True, "model_name": "from-ray"}
    ).json()
    assert task["status"] == "completed" and task["model_id"], task
    model = api.get(f"/model/{task['model_id']}").json()
    assert model["file_name"] == "model.pt" and model["task_id"] == task["task_id"]
    assert model["file_size"] == len(b"trained on ray")


async def test_a_kernel_runs_under_a_ray_actor_and_frees_its_gpu(
    ray_gateway: GatewayProcess, api: Api
) -> None:
    """State across executes over the channels, the GPU Ray gave its actor, and DELETE ends the
    process and gives the slot back."""
    with session_kernel(api, "on-ray") as kernel:
        assert api.get("/gpu/pool").json()["allocations"][kernel["id"]] == kernel["gpus"]
        url = ray_gateway.url.replace("http", "ws", 1) + f"/api/kernels/{kernel['id']}/channels"
        ch = await Channels.open(url, ray_gateway.token)
        try:
            assert (await ch.execute("x = 41")).status == "ok"
            assert (await ch.execute("x + 1")).result() == "42"
            shown = await ch.execute(
                "import os; print(os.getpid(), os.environ['CUDA_VISIBLE_DEVICES'])"
            )
            sleeping = await ch.send("shell", "execute_request", {"code": SLEEP_CELL})
            await ch.printed(sleeping, "sleeping")
            assert api.post(f"/api/kernels/{kernel['id']}/interrupt").status_code == 204
            assert (await ch.reply(sleeping))["content"]["ename"] == "KeyboardInterrupt"
            assert (await execute_after_error(ch, "x")).result() == "41"
        finally:
            await ch.close()
        pid, cuda = shown.stdout.split()
        assert cuda in ("0", "1") and pid_alive(int(pid))  # one of the head's two GPUs
        assert f"kernel {kernel['id']}: Ray actor on node" in ray_gateway.log()
        assert api.post(f"/api/kernels/{kernel['id']}/restart").status_code == 200
        assert (await _execute(ray_gateway, kernel["id"], "'x' in globals()")).result() == "False"
        wait_for(lambda: not pid_alive(int(pid)), 30, what="the first kernel process to end")
        again = await _execute(ray_gateway, kernel["id"], "import os; print(os.getpid())")
        pid = again.stdout.strip()
        assert pid_alive(int(pid))  # the new process, under the same actor
        assert api.delete(f"/api/kernels/{kernel['id']}").status_code == 204
    assert_kernel_gone(api, kernel)
    wait_for(lambda: not pid_alive(int(pid)), 30, what="the kernel process to end")


async def _execute(gw: GatewayProcess, kernel_id: str, code: str) -> Executed:
    url = gw.url.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"
    ch = await Channels.open(url, gw.token)
    try:
        return await ch.execute(code)
    finally:
        await ch.close()


async def test_gateway_restart_adopts_a_kernel_by_its_actor(ray_gateway: GatewayProcess) -> None:
    started = ray_gateway.api.post("/api/kernels", json={"name": "vrungpu-1gpu"})
    assert started.status_code == 201, started.text
    kernel = started.json()
    try:
        assert (await _execute(ray_gateway, kernel["id"], "y = 7")).status == "ok"
        ray_gateway.restart()
        assert f"kernel {kernel['id']}: adopted its Ray actor" in ray_gateway.log()
        pool = ray_gateway.api.get("/gpu/pool").json()
        assert pool["allocations"][kernel["id"]] == kernel["gpus"]
        assert (await _execute(ray_gateway, kernel["id"], "y * 6")).result() == "42"
    finally:
        ray_gateway.api.delete(f"/api/kernels/{kernel['id']}")
    assert_kernel_gone(ray_gateway.api, kernel)


def _parent_command(pid: int) -> str:
    ppid = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    return Path(f"/proc/{ppid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_inference_runs_on_a_warm_worker_under_a_ray_actor(api: Api) -> None:
    """The model folder travels to the actor's node, the worker stays warm there, a crash
    starts a new one, and deleting the model ends it and gives its GPU back."""
    model_id = register_plain(api, "served-on-ray", scale=3.0)["model_id"]
    first = infer(api, model_id, {"x": [1, 2]})
    assert (first["status"], first["result"]["y"]) == ("completed", [3.0, 6.0]), first
    pid = first["result"]["pid"]
    assert "ModelWorkerActor" in _parent_command(pid)  # a Ray worker runs it, not the gateway
    assert "scaling 2 values" in _stdout(api, first["task_id"])
    warm = infer(api, model_id, {"x": [5]})
    assert (warm["result"]["y"], warm["result"]["pid"]) == ([15.0], pid)
    [worker] = workers(api)["workers"]
    assert worker["model_id"] == model_id and worker["pid"] == pid and worker["gpu_ids"]

    failed = infer(api, model_id, {"fail": "nope"})
    assert failed["status"] == "failed" and "bad input: nope" in failed["error"], failed
    crashed = infer(api, model_id, {"crash": True})
    assert crashed["status"] == "failed" and "exited with code 3" in crashed["error"], crashed
    wait_for(lambda: not pid_alive(pid), 20, what="the crashed worker to be gone")
    again = infer(api, model_id, {"x": [1]})
    assert again["result"]["y"] == [3.0] and again["result"]["pid"] != pid
    slow = infer(api, model_id, {"sleep": 60}, timeout=1)  # the worker is stopped mid-predict
    assert (slow["status"], slow["failure_reason"]) == ("failed", "timeout"), slow
    wait_for(lambda: not pid_alive(again["result"]["pid"]), 20, what="the timed-out worker")
    again = infer(api, model_id, {"x": [2]})
    assert again["result"]["y"] == [6.0]

    assert api.delete(f"/model/{model_id}").status_code in (200, 204)
    wait_no_workers(api)
    wait_for(lambda: not pid_alive(again["result"]["pid"]), 20, what="the worker to end")
    pool = wait_for(
        lambda: (p := api.get("/gpu/pool").json())["available_gpus"] == [0, 1] and p,
        20,
        what="the worker's GPU to come back",
    )
    assert pool["available_gpus"] == [0, 1]


def test_gateway_restart_adopts_a_running_ray_job(
    ray_gateway: GatewayProcess, api: Api, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "go")
    code = "print('before', flush=True)\n" + gate.code + "print('after')\n"
    try:
        task_id = api.submit(code)
        wait_for(lambda: _stdout(api, task_id) == "before", 60, what="first line")
        ray_gateway.restart()
        api = ray_gateway.api
        assert api.task(task_id)["status"] == "running"
        gate.open()
        task = api.wait_status(task_id, "completed", "failed", timeout_s=60)
    finally:
        gate.open()
    assert task["status"] == "completed", task
    assert _stdout(api, task_id) == "before\nafter"
    assert "adopted its Ray actor" in ray_gateway.log()


def test_an_unreachable_cluster_stops_the_gateway_with_one_line(tmp_path: Path) -> None:
    port = _free_port()
    gateway = subprocess.run(
        [
            sys.executable,
            "-m",
            "vrungpu_gateway",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path / "data"),
            "--no-auth",
            "--backend",
            "ray",
            "--ray-address",
            f"127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **RAY_ENV},
        timeout=60,
        check=False,
    )
    assert gateway.returncode == 2
    assert gateway.stderr.strip().splitlines() == [
        f"vrungpu-gateway: cannot reach the Ray cluster at 127.0.0.1:{port}: "
        "[Errno 111] Connection refused"
    ]

"""Warm start end to end: real gateways fork jobs from their zygote (``--preload``).

tests/test_zygote.py proves the job semantics at the launcher level; here the same things are
seen through the API: an uploaded project run warm, a cold run beside it (another ``--python``),
the zygote restarted after it dies, and torch preloaded without touching CUDA.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Api, GatewayProcess, pid_alive, wait_for
from tests.test_projects import make_zip, upload

Starter = Callable[..., GatewayProcess]
READY = re.compile(r"zygote pid (\d+) ready")
ZYGOTE_START_S = 60.0  # a zygote importing numpy or torch on a loaded 2-core machine

MAIN = """\
import json, multiprocessing, os, sys
import helper

def square(x):
    return x * x

if __name__ == "__main__":
    if sys.argv[1:2] == ["raise"]:
        helper.fail()
    if sys.argv[1:2] == ["exit"]:
        sys.exit(3)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        spawned = pool.map(square, [1, 2, 3])
    with multiprocessing.get_context("fork").Pool(2) as pool:
        forked = pool.map(helper.double, [1, 2, 3])
    print(json.dumps({
        "name": __name__,
        "argv": sys.argv,
        "cwd": os.getcwd(),
        "helper": helper.WHERE,
        "numpy": "numpy" in sys.modules,
        "spawn": spawned,
        "fork": forked,
    }))
"""
HELPER = """\
import os

WHERE = os.path.basename(os.path.dirname(os.path.abspath(__file__)))

def double(x):
    return 2 * x

def fail():
    raise ValueError("boom from helper")
"""
PROJECT = make_zip({"app/main.py": MAIN, "app/helper.py": HELPER, "README.txt": "warm test"})
ENTRY = "app/main.py"
PROBE = "import json, sys\nprint(json.dumps({'numpy': 'numpy' in sys.modules}))\n"


def zygote_pids(gw: GatewayProcess) -> list[int]:
    """Every zygote the gateway reported ready, in order."""
    return [int(pid) for pid in READY.findall(gw.log())]


@pytest.fixture
def gateways(start_gateway: Callable[..., GatewayProcess]) -> Iterator[Starter]:
    """``start_gateway``, and at the end: each gateway stopped, and every zygote it had gone."""
    started: list[GatewayProcess] = []

    def start(**kwargs: Any) -> GatewayProcess:
        started.append(start_gateway(**kwargs))
        return started[-1]

    yield start
    zygotes = []
    for gw in started:
        gw.stop()
        zygotes += zygote_pids(gw)
    wait_for(lambda: not any(map(pid_alive, zygotes)), 30, what=f"zygotes {zygotes} to end")


def start_warm(gateways: Starter, preload: str) -> GatewayProcess:
    gw = gateways(extra=["--preload", preload])
    wait_for(lambda: zygote_pids(gw), ZYGOTE_START_S, what="the zygote")
    return gw


def run_project(api: Api, *args: str) -> str:
    res = upload(api, PROJECT, entry_point=ENTRY, args=json.dumps(list(args)), timeout="120")
    assert res.status_code == 202, res.text
    return res.json()["task_id"]


def finished(api: Api, task_id: str) -> dict[str, Any]:
    return api.wait_status(task_id, "completed", "failed", "cancelled", timeout_s=60)


def printed(task: dict[str, Any]) -> dict[str, Any]:
    assert task["status"] == "completed" and task["return_code"] == 0, task
    return json.loads(task["stdout"].strip().splitlines()[-1])


def kill_zygote(pid: int) -> None:
    """SIGKILL it and wait until none of its threads is left. A killed leader is a zombie while
    its other threads (torch's, OpenBLAS's) still exit; until then the gateway cannot reap it,
    and a job sent meanwhile finds it "healthy", fails over to cold, and schedules no restart."""
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid) and len(threads(pid)) <= 1, what="the zygote to die")


def threads(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


def probe(api: Api) -> bool:
    """Whether a trivial job saw numpy already imported (it ran warm)."""
    return bool(printed(finished(api, api.submit(PROBE)))["numpy"])


def test_uploaded_project_runs_warm_as_python_would(
    gateways: Starter,
) -> None:
    gw = start_warm(gateways, "numpy")
    ok, raised, exited = (
        run_project(gw.api, "--lr", "0.1", "two words"),
        run_project(gw.api, "raise"),
        run_project(gw.api, "exit"),
    )

    out = printed(finished(gw.api, ok))
    assert out == {
        "name": "__main__",
        "argv": [ENTRY, "--lr", "0.1", "two words"],
        "cwd": str(gw.data_dir.resolve() / "workspaces" / ok),
        "helper": "app",
        "numpy": True,  # preloaded by the zygote: a cold python would not have it
        "spawn": [1, 4, 9],
        "fork": [2, 4, 6],
    }

    task = finished(gw.api, raised)
    assert (task["status"], task["return_code"], task["failure_reason"]) == (
        "failed",
        1,
        "exit_code",
    )
    stderr = task["stderr"]
    assert stderr.startswith("Traceback (most recent call last):\n"), stderr
    entry = gw.data_dir.resolve() / "workspaces" / raised / ENTRY
    assert f'"{entry}", line 9, in <module>' in stderr
    assert "in fail\n" in stderr and stderr.endswith("ValueError: boom from helper\n")

    task = finished(gw.api, exited)
    assert (task["status"], task["return_code"], task["stderr"]) == ("failed", 3, "")


def test_another_python_runs_cold(gateways: Starter, tmp_path: Path) -> None:
    python = tmp_path / "python3"
    python.symlink_to(sys.executable)  # the same interpreter under another path: no zygote
    gw = gateways(extra=["--preload", "numpy", "--python", str(python)])
    assert not probe(gw.api)
    assert zygote_pids(gw) == [] and not (gw.data_dir / "run" / "zygote.log").exists()


def test_a_killed_zygote_is_restarted(gateways: Starter) -> None:
    gw = start_warm(gateways, "numpy")
    assert probe(gw.api)
    [first] = zygote_pids(gw)
    kill_zygote(first)

    assert not probe(gw.api)  # ran cold meanwhile, and completed
    second = wait_for(lambda: zygote_pids(gw)[1:], ZYGOTE_START_S, what="a new zygote")[0]
    assert second != first and pid_alive(second)
    assert probe(gw.api)

    gw.stop()
    wait_for(lambda: not pid_alive(second), what="the zygote to end with its gateway")


def zygotes_of(gateway_pid: int) -> list[int]:
    """The zygote processes the gateway started (forked shims are the zygote's children)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == gateway_pid and b"engine.zygote" in cmdline:
            found.append(int(proc.name))
    return found


def test_a_zygote_starting_when_its_gateway_dies_ends(
    gateways: Starter,
) -> None:
    pytest.importorskip("torch")  # a preload slow enough to kill the gateway meanwhile
    gw = start_warm(gateways, "torch")
    assert gw.proc is not None
    [first] = zygote_pids(gw)
    kill_zygote(first)
    assert not printed(finished(gw.api, gw.api.submit(PROBE)))["numpy"]  # cold; restart due
    gateway_pid = gw.proc.pid
    [starting] = wait_for(
        lambda: [p for p in zygotes_of(gateway_pid) if p != first],
        ZYGOTE_START_S,
        what="the zygote's restart",
    )
    gw.stop(signal.SIGKILL)
    assert len(zygote_pids(gw)) == 1  # killed before the new one was ready
    wait_for(lambda: not pid_alive(starting), 30, what="the orphaned zygote to exit")


def test_preloaded_torch_leaves_cuda_to_the_job(
    gateways: Starter,
) -> None:
    pytest.importorskip("torch")
    gw = start_warm(gateways, "torch")
    code = (
        "import json, os, sys\n"
        "torch = sys.modules.get('torch')\n"
        "print(json.dumps({'torch': torch is not None,\n"
        "    'cuda': torch is not None and torch.cuda.is_initialized(),\n"
        "    'devices': os.environ.get('CUDA_VISIBLE_DEVICES')}))\n"
    )
    task = finished(gw.api, gw.api.submit(code, gpu_id=1))
    assert printed(task) == {"torch": True, "cuda": False, "devices": "1"}

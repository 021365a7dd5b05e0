"""The job runtime: detached jobs that outlive the gateway, containment, spawn errors,
bounded logs and a database that stays locked for a while."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Callable

import pytest

from tests.support import Gate, GatewayProcess, pid_alive, shim_pids, wait_for

LINES = 200


def _gated_job(gate: Gate, tag: str) -> str:
    """Prints LINES lines, waits for the gate, prints LINES more, exits 0."""
    return (
        f"for i in range({LINES}):\n    print('{tag}-before', i, flush=True)\n"
        + gate.code
        + f"for i in range({LINES}):\n    print('{tag}-after', i, flush=True)\n"
    )


def _expected(tag: str) -> list[str]:
    return [f"{tag}-before {i}" for i in range(LINES)] + [f"{tag}-after {i}" for i in range(LINES)]


def _stdout_lines(gw: GatewayProcess, task_id: str) -> list[str]:
    res = gw.api.get(f"/task/{task_id}/logs", params={"stream": "stdout"})
    assert res.status_code == 200, res.text
    return res.json()["content"].splitlines()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "SIGTERM"])
def test_jobs_survive_the_gateway_and_are_adopted_at_restart(
    start_gateway: Callable[..., GatewayProcess],
    make_gate: Callable[[], Gate],
    sig: signal.Signals,
) -> None:
    gw = start_gateway(gpus="sim:2")  # the default --on-stop: leave
    api = gw.api
    gates = [make_gate() for _ in range(4)]
    ids = [api.submit(_gated_job(g, f"job{n}")) for n, g in enumerate(gates)]
    for task_id in ids[:2]:
        wait_for(lambda t=task_id: api.task(t)["stdout"].count("before") >= LINES, 20)
    assert [api.task(t)["status"] for t in ids] == ["running", "running", "queued", "queued"]
    gw.stop(sig, end_jobs=False)
    gates[0].open()  # job0 ends while no gateway is there; its real exit code must be kept
    wait_for(lambda: ids[0] not in shim_pids(gw.data_dir), 20, what="job0 to end while down")
    gw.start()
    api = gw.api
    running = api.task(ids[1])
    assert running["status"] == "running" and running["gpu_ids"]  # adopted, GPU held
    assert api.get("/gpu/pool").json()["busy_gpus"].get(ids[1]) == running["gpu_id"]
    for gate in gates[1:]:
        gate.open()
    for n, task_id in enumerate(ids):
        done = api.wait_status(task_id, "completed", "failed", "cancelled", timeout_s=60)
        assert (done["status"], done["return_code"]) == ("completed", 0), done
        assert _stdout_lines(gw, task_id) == _expected(f"job{n}")
    assert api.get("/gpu/pool").json()["busy_gpus"] == {}


def test_a_job_that_ended_while_the_gateway_was_down_keeps_its_exit_code(
    start_gateway: Callable[..., GatewayProcess], gate: Gate
) -> None:
    gw = start_gateway()
    api = gw.api
    task_id = api.submit("print('ready', flush=True)\n" + gate.code + "print('bye')\nexit(7)")
    wait_for(lambda: api.task(task_id)["stdout"], 20, what="the job to start")
    gw.stop(signal.SIGKILL, end_jobs=False)
    gate.open()
    wait_for(lambda: task_id not in shim_pids(gw.data_dir), 20, what="the job to end")
    gw.start()
    done = gw.api.wait_status(task_id, "failed", "completed")
    assert done["return_code"] == 7 and done["failure_reason"] == "exit_code"
    assert done["stdout"] == "ready\nbye\n"


def test_cancel_during_restart_window_reaches_an_adopted_job(
    start_gateway: Callable[..., GatewayProcess], gate: Gate
) -> None:
    gw = start_gateway()
    task_id = gw.api.submit("import os\nprint(os.getpid(), flush=True)\n" + gate.code)
    pid = int(wait_for(lambda: gw.api.task(task_id)["stdout"], 20))
    gw.restart()
    res = gw.api.post(f"/task/{task_id}/cancel")
    assert res.status_code == 200 and res.json()["status"] == "cancelled", res.text
    assert not pid_alive(pid)


ESCAPE = """
import os, subprocess, sys, time
# a grandchild in a session of its own, holding our stdout open
child = subprocess.Popen(["setsid", "sleep", "300"])
# and a daemon: double fork, setsid, no parent to wait for it
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        print("daemon", os.getpid(), flush=True)
        time.sleep(300)
    os._exit(0)
print("escapees", os.getpid(), child.pid, flush=True)
"""


def _escapees(gw: GatewayProcess, task_id: str) -> list[int]:
    """The job's leader, its setsid grandchild and its daemon."""
    out = wait_for(
        lambda: (o := gw.api.task(task_id)["stdout"]).count("\n") >= 2 and o,
        20,
        what="the escapees started",
    )
    pids = [int(word) for word in out.split() if word.isdigit()]
    assert len(pids) == 3 and all(pid_alive(p) for p in pids), out
    return pids


@pytest.mark.parametrize("how", ["cancel", "timeout", "exit"])
def test_processes_that_escape_the_group_die_with_the_job(
    start_gateway: Callable[..., GatewayProcess], gate: Gate, how: str
) -> None:
    gw = start_gateway(extra=["--kill-grace", "1"])
    api = gw.api
    tail = {"cancel": gate.code, "timeout": "time.sleep(300)\n", "exit": gate.code}[how]
    task_id = api.submit(ESCAPE + tail, timeout=4 if how == "timeout" else 600)
    pids = _escapees(gw, task_id)
    if how == "cancel":
        assert api.post(f"/task/{task_id}/cancel").json()["status"] == "cancelled"
    elif how == "exit":
        gate.open()
    done = api.wait_status(task_id, "completed", "failed", "cancelled", timeout_s=30)
    expected = {"cancel": "cancelled", "timeout": "failed", "exit": "completed"}[how]
    assert done["status"] == expected, done
    if how == "timeout":
        assert done["failure_reason"] == "timeout"
    # the task is terminal only once every process of the job is gone
    assert [p for p in pids if pid_alive(p)] == []
    assert api.get("/gpu/pool").json()["busy_gpus"] == {}


def test_spawn_errors_fail_the_task_at_once(api) -> None:  # type: ignore[no-untyped-def]
    # 200 KB in one value: within --max-env-kb, over the kernel's 128 KiB per string
    res = api.post("/run/sync", json={"code": "print('never')", "env": {"BIG": "x" * 200_000}})
    assert res.status_code == 200, res.text
    task = res.json()
    assert (task["status"], task["failure_reason"]) == ("failed", "spawn_error"), task
    assert task["error"].startswith("Could not start the job") and "\n" not in task["error"]
    assert task["stdout"] == ""
    assert api.get("/gpu/pool").json()["busy_gpus"] == {}


def test_a_nul_in_args_is_refused_before_a_task_exists(api) -> None:  # type: ignore[no-untyped-def]
    before = api.get("/tasks").headers["X-Total-Count"]
    res = api.post("/run/sync", json={"code": "print('never')", "args": ["nul\x00byte"]})
    assert res.status_code == 400, res.text
    assert res.json()["code"] == "bad_json" and "NUL" in res.json()["detail"]
    assert api.get("/tasks").headers["X-Total-Count"] == before


def test_a_missing_interpreter_is_a_spawn_error(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    gw = start_gateway(extra=["--python", "/nonexistent/python3"])
    task = gw.api.post("/run/sync", json={"code": "print(1)"}).json()
    assert (task["status"], task["failure_reason"]) == ("failed", "spawn_error"), task
    assert "/nonexistent/python3" in task["error"]


def test_logs_stop_at_max_log_mb_and_the_job_runs_on(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    gw = start_gateway(extra=["--max-log-mb", "5"])
    code = (
        "import sys\nline = 'x' * 1023 + '\\n'\n"
        "for _ in range(20 * 1024):\n    sys.stdout.write(line)\n"
        "sys.stdout.flush()\nsys.stderr.write('still here\\n')\n"
    )
    task = gw.api.post("/run/sync", json={"code": code}).json()
    assert (task["status"], task["return_code"]) == ("completed", 0), task
    assert task["stdout_log_truncated"] and not task["stderr_log_truncated"]
    assert task["stderr"] == "still here\n"
    log = gw.data_dir / "logs" / f"{task['task_id']}.stdout.log"
    size = log.stat().st_size
    assert 5 * 2**20 <= size <= 5 * 2**20 + 1024, size
    assert log.read_bytes().rstrip().endswith(b"the job keeps running")


@pytest.mark.slow
def test_a_database_locked_for_15_s_changes_no_outcome_and_leaks_no_slot(
    start_gateway: Callable[..., GatewayProcess], make_gate: Callable[[], Gate]
) -> None:
    gw = start_gateway(gpus="sim:1")
    api = gw.api
    gate = make_gate()
    first = api.submit(gate.code + "print('done')")
    api.wait_status(first, "running")
    second = api.submit("print('second')")
    lock = sqlite3.connect(gw.data_dir / "vrungpu.db", timeout=30)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        gate.open()  # the job exits 0 while nothing can be written
        wait_for(lambda: first not in shim_pids(gw.data_dir), 20, what="the job to exit")
        wait_for(lambda: "database busy" in gw.log(), 20, what="a write to meet the lock")
        time.sleep(15)  # the point of the test: the lock is held this long
    finally:
        lock.rollback()
        lock.close()
    done = api.wait_status(first, "completed", "failed", timeout_s=60)
    assert (done["status"], done["return_code"], done["error"]) == ("completed", 0, None)
    after = api.wait_status(second, "completed", "failed", timeout_s=60)
    assert after["status"] == "completed" and after["stdout"] == "second\n"
    assert api.get("/gpu/pool").json()["busy_gpus"] == {}


def test_on_stop_drain_waits_for_running_jobs(
    start_gateway: Callable[..., GatewayProcess], gate: Gate
) -> None:
    gw = start_gateway(extra=["--on-stop", "drain"])
    task_id = gw.api.submit(gate.code + "print('drained')")
    gw.api.wait_status(task_id, "running")
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "running jobs: drain" in gw.log(), 20, what="the drain to begin")
    assert gw.proc.poll() is None  # still waiting for the job
    gate.open()
    assert gw.proc.wait(timeout=30) == 0
    gw.start()
    done = gw.api.task(task_id)
    assert (done["status"], done["stdout"]) == ("completed", "drained\n")


def test_a_cancel_right_after_the_start_is_never_lost(api) -> None:  # type: ignore[no-untyped-def]
    # The cancel lands while the job's shim is still starting (its SIGTERM handler not yet
    # set): it must still end the job as cancelled, not let it run on.
    for _ in range(10):
        task_id = api.submit("import time\ntime.sleep(600)")
        res = api.post(f"/task/{task_id}/cancel", timeout=30)
        assert res.status_code == 200 and res.json()["status"] == "cancelled", res.text

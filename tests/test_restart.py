"""Everything persists across restarts; what a stopped gateway left behind is reconciled."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest

from tests.support import GatewayProcess, pid_alive, shim_pids, wait_for

SLEEP = "import os, time\nprint('started', os.getpid(), flush=True)\ntime.sleep(60)"


def test_restart_keeps_tasks_and_their_output(start_gateway: Callable[..., GatewayProcess]) -> None:
    gw = start_gateway()
    api = gw.api
    done = api.post("/run/sync", json={"code": "print('kept')", "name": "keep"}).json()
    gw.restart()
    api = gw.api
    again = api.task(done["task_id"])
    assert again["status"] == "completed" and again["stdout"] == "kept\n"
    assert again["name"] == "keep" and again["created_at"] == done["created_at"]
    assert (
        api.get(f"/task/{done['task_id']}/logs", params={"stream": "stdout"}).json()["content"]
        == "kept\n"
    )
    assert api.get("/").json()["total_tasks"] == 1


def test_a_job_whose_shim_vanished_is_lost_and_its_processes_killed(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    gw = start_gateway(gpus="sim:1")
    api = gw.api
    running = api.submit(SLEEP)
    queued = api.submit("print('ran after restart')", priority=2)
    t = wait_for(lambda: (t := api.task(running))["stdout"] and t, 10)
    assert api.task(queued)["status"] == "queued"
    job = int(t["stdout"].split()[1])
    gw.stop(signal.SIGKILL, end_jobs=False)  # a crash; then the job's shim dies too
    os.kill(shim_pids(gw.data_dir)[running], signal.SIGKILL)
    gw.start()
    api = gw.api
    lost = api.wait_status(running, "failed")
    assert lost["failure_reason"] == "lost" and "vanished" in lost["error"]
    assert lost["stdout"].startswith("started")
    wait_for(lambda: not pid_alive(job), 10, what="the orphaned job killed at start-up")
    done = api.wait_status(queued, "completed")
    assert done["stdout"] == "ran after restart\n"


def test_on_stop_kill_ends_running_jobs(start_gateway: Callable[..., GatewayProcess]) -> None:
    gw = start_gateway(extra=["--on-stop", "kill"])
    api = gw.api
    task_id = api.submit("import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(60)")
    t = wait_for(lambda: (t := api.task(task_id))["stdout"] and t, 10)
    pid = int(t["stdout"])
    assert gw.stop(end_jobs=False) == 0
    assert not pid_alive(pid)
    gw.start()
    t = gw.api.task(task_id)
    assert t["status"] == "failed" and t["failure_reason"] == "lost"
    assert "--on-stop kill" in t["error"]


@pytest.mark.parametrize("on_stop", ["leave", "kill"])
def test_clean_stop_leaves_queued_tasks_queued(
    start_gateway: Callable[..., GatewayProcess], on_stop: str
) -> None:
    gw = start_gateway(gpus="sim:1", extra=["--on-stop", on_stop])
    api = gw.api
    running = api.submit(SLEEP)
    waiting = api.submit("print('my turn')")
    wait_for(lambda: api.task(running)["stdout"], 10)
    assert api.task(waiting)["status"] == "queued"
    # kill: the running job ends, and its freed GPU must not start the next one
    assert gw.stop(end_jobs=on_stop == "leave") == 0
    gw.start()
    api = gw.api
    assert api.task(running)["failure_reason"] == ("lost" if on_stop == "kill" else "cancelled")
    done = api.wait_status(waiting, "completed", "failed")
    assert done["status"] == "completed" and done["stdout"] == "my turn\n"


def test_a_second_gateway_on_the_same_data_dir_is_refused(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    first = start_gateway()
    with pytest.raises(AssertionError, match="in use by another gateway"):
        GatewayProcess(first.data_dir).start()  # it would run jobs on the first one's GPUs
    assert first.api.get("/").status_code == 200  # the first one is untouched
    first.stop(signal.SIGKILL, end_jobs=False)  # a crash releases the data dir
    first.start()
    assert first.api.get("/").status_code == 200

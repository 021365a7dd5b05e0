"""Running jobs through a real gateway: queueing, GPUs, environment, progress, ends."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from tests.support import TOKEN, Api, Gate, GatewayProcess, pid_alive, wait_for

SLEEP = "import time\ntime.sleep({s})\nprint('done')"
ENV = "import os\nprint(repr(os.environ.get({name!r})))"


def test_sync_run_returns_the_finished_task(api: Api) -> None:
    task = api.post("/run/sync", json={"code": "print('Hello GPU!')", "timeout": 30}).json()
    assert task["status"] == "completed" and task["return_code"] == 0
    assert task["stdout"] == "Hello GPU!\n" and task["stdout_truncated"] is False
    assert task["progress"] == 100 and task["gpu_ids"] == [0] and task["device"] == "gpu"
    for key in ("created_at", "started_at", "completed_at"):
        assert task[key].endswith("+00:00")
    assert task["duration"] >= 0 and task["task_type"] == "training"


def test_three_tasks_on_two_gpus_queue_then_all_complete(api: Api, gate: Gate) -> None:
    code = gate.code + "for i in range(1, 5):\n    print(f'[PROGRESS:{i*25}:step {i}]', flush=True)"
    ids = [api.submit(code) for _ in range(3)]

    def states() -> list[str]:
        return [api.task(t)["status"] for t in ids]

    wait_for(
        lambda: sorted(states()) == ["queued", "running", "running"],
        10,
        what="2 running + 1 queued",
    )
    queued = next(t for t in map(api.task, ids) if t["status"] == "queued")
    assert queued["queue_position"] == 1
    pool = api.get("/gpu/pool").json()
    assert pool["available_gpus"] == [] and sorted(pool["busy_gpus"].values()) == [0, 1]
    gate.open()
    for task_id in ids:
        done = api.wait_status(task_id, "completed", timeout_s=30)
        assert done["progress"] == 100 and done["progress_message"] == "step 4"


def test_priority_runs_first(api: Api, gate: Gate) -> None:
    blockers = [api.submit(gate.code) for _ in range(2)]
    for b in blockers:
        api.wait_status(b, "running")
    low = api.submit("print('low')", priority=0)
    high = api.submit("print('high')", priority=10)
    assert api.task(high)["queue_position"] == 1 and api.task(low)["queue_position"] == 2
    gate.open()
    high_done = api.wait_status(high, "completed")
    low_done = api.wait_status(low, "completed")
    assert high_done["started_at"] <= low_done["started_at"]
    for b in blockers:
        api.wait_status(b, "completed")


def test_gpu_selection_sets_cuda_visible_devices(api: Api) -> None:
    code = ENV.format(name="CUDA_VISIBLE_DEVICES")
    on1 = api.post("/run/sync", json={"code": code, "gpu_id": 1}).json()
    assert on1["stdout"].strip() == "'1'" and on1["gpu_id"] == 1 and on1["gpu_ids"] == [1]
    both = api.post("/run/sync", json={"code": code, "gpus": 2}).json()
    assert both["stdout"].strip() == "'0,1'" and both["gpu_ids"] == [0, 1]
    cpu = api.post("/run/sync", json={"code": code, "device": "cpu"}).json()
    assert cpu["stdout"].strip() == "''" and cpu["device"] == "cpu" and cpu["gpu_ids"] == []


def test_job_environment_is_an_allowlist(start_gateway: Callable[..., GatewayProcess]) -> None:
    gw = start_gateway(env={"VRUNGPU_TOKEN": TOKEN, "MY_SECRET": "s3cret"})
    api = gw.api
    code = "import os, json\nprint(json.dumps(dict(os.environ)))"
    task = api.post("/run/sync", json={"code": code, "env": {"MY_SETTING": "x"}}).json()
    env = json.loads(task["stdout"])
    assert "MY_SECRET" not in env and "VRUNGPU_TOKEN" not in env
    assert TOKEN not in task["stdout"]
    assert env["VRUNGPU_TASK_ID"] == task["task_id"] and env["MY_SETTING"] == "x"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" and env["PYTHONUNBUFFERED"] == "1"
    workspace = gw.data_dir / "workspaces" / task["task_id"]
    assert Path(env["VRUNGPU_WORKSPACE"]).resolve() == workspace.resolve()
    res = api.post("/run/async", json={"code": "1", "env": {"CUDA_VISIBLE_DEVICES": "3"}})
    assert res.status_code == 400 and "CUDA_VISIBLE_DEVICES" in res.json()["detail"]


def test_progress_is_followed_while_running(api: Api, make_gate: Callable[[], Gate]) -> None:
    first, second = make_gate(), make_gate()
    code = (
        "import sys\nprint('[PROGRESS:30:Epoch 3/10 완료, Loss: 0.5]', flush=True)\n"
        + first.code
        + "sys.stderr.write('\\rtrain:  70%|███████   | 7/10')\nsys.stderr.flush()\n"
        + second.code
    )
    task_id = api.submit(code)
    t = wait_for(lambda: (t := api.task(task_id))["progress"] == 30 and t, 10)
    assert t["status"] == "running" and t["progress_message"] == "Epoch 3/10 완료, Loss: 0.5"
    first.open()
    t = wait_for(lambda: (t := api.task(task_id))["progress"] == 70 and t, 10)
    assert t["status"] == "running" and t["progress_message"] == "train"
    second.open()
    assert api.wait_status(task_id, "completed")["progress"] == 100


def test_manual_progress_update(api: Api, gate: Gate) -> None:
    task_id = api.submit(gate.code)
    api.wait_status(task_id, "running")
    res = api.put(f"/task/{task_id}/progress", json={"progress": 42, "message": "by hand"})
    assert res.status_code == 200
    t = api.task(task_id)
    assert t["progress"] == 42 and t["progress_message"] == "by hand"
    assert api.put(f"/task/{task_id}/progress", json={"progress": "x"}).status_code == 400
    api.post(f"/task/{task_id}/cancel")
    assert api.put(f"/task/{task_id}/progress", json={"progress": 1}).status_code == 409


def test_failure_keeps_the_error(api: Api) -> None:
    task = api.post("/run/sync", json={"code": "print('before')\n1/0"}).json()
    assert task["status"] == "failed" and task["failure_reason"] == "exit_code"
    assert task["return_code"] == 1 and task["stdout"] == "before\n"
    assert task["error"] == "Exit code 1: ZeroDivisionError: division by zero"
    assert "Traceback" in task["stderr"]


IGNORES_SIGTERM = (
    "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('child', flush=True)"
    "\ntime.sleep(600)"
)


def _kill_leftovers(pids: list[int]) -> None:
    """A failing test must not leave its job's processes behind."""
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_timeout_sends_sigterm_then_sigkill_to_the_whole_group(api: Api) -> None:
    # The job and its child survive SIGTERM: only the escalation to SIGKILL (after the
    # gateway's --kill-grace) ends them.
    code = (
        "import os, signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: print('got SIGTERM', flush=True))\n"
        f"child = subprocess.Popen([sys.executable, '-c', {IGNORES_SIGTERM!r}], "
        "stdout=subprocess.PIPE, text=True)\n"
        "child.stdout.readline()\n"
        "print('pids', os.getpid(), child.pid, flush=True)\n"
        "while True:\n    time.sleep(1)\n"
    )
    task_id = api.submit(code, timeout=3)
    out = wait_for(lambda: "\n" in (out := api.task(task_id)["stdout"]) and out, 10)
    pids = [int(p) for p in out.split("\n")[0].split()[1:]]
    try:
        task = api.wait_status(task_id, "completed", "failed")
        assert task["failure_reason"] == "timeout" and task["error"] == "Timeout after 3 seconds"
        assert len(pids) == 2 and "got SIGTERM" in task["stdout"]  # SIGTERM came first
        wait_for(lambda: not any(pid_alive(p) for p in pids), 10, what="SIGKILL after the grace")
    finally:
        _kill_leftovers(pids)


def test_what_the_main_process_leaves_in_its_group_dies_with_it(api: Api) -> None:
    code = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'],\n"
        "    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print(child.pid)\n"
    )
    task_id = api.submit(code, timeout=60)
    pid = int(wait_for(lambda: api.task(task_id)["stdout"], 10))
    try:
        task = api.wait_status(task_id, "completed", "failed")
        assert task["status"] == "completed" and task["return_code"] == 0
        wait_for(lambda: not pid_alive(pid), 10, what="the job's leftover child killed")
    finally:
        _kill_leftovers([pid])


def test_cancel_kills_the_whole_process_group(api: Api) -> None:
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])\n"
        "print('grandchild', child.pid, flush=True)\n"
        "import os\nprint('leader', os.getpid(), flush=True)\ntime.sleep(600)"
    )
    task_id = api.submit(code)
    t = wait_for(lambda: (t := api.task(task_id))["stdout"].count("\n") >= 2 and t, 15)
    pids = [int(line.split()[1]) for line in t["stdout"].splitlines()]
    assert all(pid_alive(p) for p in pids)
    res = api.post(f"/task/{task_id}/cancel")
    assert res.status_code == 200 and res.json()["status"] == "cancelled"
    t = api.task(task_id)
    assert t["status"] == "cancelled" and t["failure_reason"] == "cancelled"
    wait_for(lambda: not any(pid_alive(p) for p in pids), 10, what="no process left")
    assert api.post(f"/task/{task_id}/cancel").status_code == 409


def test_cancel_a_queued_task_takes_it_out_of_the_queue(api: Api) -> None:
    blockers = [api.submit(SLEEP.format(s=30)) for _ in range(2)]
    queued = api.submit("print('never')")
    assert api.task(queued)["status"] == "queued"
    assert api.post(f"/task/{queued}/cancel").json()["status"] == "cancelled"
    t = api.task(queued)
    assert t["status"] == "cancelled" and t["started_at"] is None and t["queue_position"] is None
    for b in blockers:
        api.post(f"/task/{b}/cancel")
    assert api.get("/gpu/pool").json()["available_gpus"] == [0, 1]


def test_delete_removes_row_workspace_and_logs(api: Api, gateway: GatewayProcess) -> None:
    task_id = api.post(
        "/run/sync", json={"code": "open('out.txt','w').write('x')\nprint(1)"}
    ).json()["task_id"]
    workspace = gateway.data_dir / "workspaces" / task_id
    logs = list((gateway.data_dir / "logs").glob(f"{task_id}.*"))
    assert workspace.is_dir() and logs
    assert api.delete(f"/task/{task_id}").status_code == 200
    assert api.get(f"/task/{task_id}").status_code == 404
    assert not workspace.exists() and not any(p.exists() for p in logs)
    running = api.submit(SLEEP.format(s=60))
    api.wait_status(running, "running")
    assert api.delete(f"/task/{running}").status_code == 200
    assert api.get("/gpu/pool").json()["available_gpus"] == [0, 1]


def test_server_answers_while_a_sync_job_runs(
    api: Api, gateway: GatewayProcess, gate: Gate
) -> None:
    # Behaviour, not speed (bench/bench_gateway.py measures it): while a /run/sync request
    # waits on a job that only ends when the test says so, other requests are answered.
    result: dict[str, object] = {}
    worker = threading.Thread(
        target=lambda: result.update(api.post("/run/sync", json={"code": gate.code}).json())
    )
    worker.start()
    try:
        wait_for(lambda: api.get("/gpu/pool").json()["busy_gpus"], 10, what="sync job running")
        other = Api(gateway.url, TOKEN)
        for _ in range(10):
            assert other.get("/", timeout=10).status_code == 200
            assert other.get("/tasks", timeout=10).status_code == 200
        assert worker.is_alive(), "the sync request should still be waiting on its job"
    finally:
        gate.open()
        worker.join()
    assert result["status"] == "completed"

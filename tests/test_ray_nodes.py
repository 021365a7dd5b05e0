"""``--backend ray`` on a cluster of two nodes with one GPU each (both on this machine: a head
and a second raylet joined to it). What one node cannot show: jobs spread over the nodes, each
seeing its node's only GPU; a job asking for more GPUs than any node has fails at once; the
pool lists each node with its GPU."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Api, Gate, GatewayProcess, wait_for
from tests.test_ray import RAY_CLI, RAY_ENV, ray_cluster
from tests.test_secrets import (
    SYSTEM_PYTHON,
    needs_readable_checkout,
    needs_root,
    needs_system_python,
)
from vrungpu_gateway.engine.jobuser import TASK_IDS, JobUser

pytest.importorskip("ray", reason="--backend ray needs the ray package (the ray extra)")
pytestmark = pytest.mark.slow  # two raylets start in 10-60 s


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    if not RAY_CLI.exists():
        pytest.skip(f"the ray command is not installed beside {sys.executable}")
    with ray_cluster(gpus_per_node=(1, 1)) as address:
        yield address


@pytest.fixture(scope="module")
def gateway(cluster: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(
        tmp_path_factory.mktemp("ray-nodes"),
        extra=["--backend", "ray", "--ray-address", cluster],
        env=RAY_ENV,
    )
    yield gw.start()
    gw.stop()


@pytest.fixture
def api(gateway: GatewayProcess) -> Api:
    return gateway.api


def _node_of(gateway: GatewayProcess, task_id: str) -> str:
    """The node the gateway's log says the task's actor runs on."""
    pattern = re.compile(rf"task {task_id}: Ray actor on node (\w+)")
    found = wait_for(lambda: pattern.search(gateway.log()), 60, what=f"task {task_id} placed")
    return found.group(1)


def test_the_pool_lists_each_node_with_its_gpu(api: Api) -> None:
    gpus = api.get("/gpu").json()
    assert gpus["kind"] == "ray" and [d["index"] for d in gpus["devices"]] == [0, 1]
    nodes = api.get("/gpu/pool").json()["nodes"]
    assert sorted(len(node["gpus"]) for node in nodes) == [1, 1]
    assert len({node["node_id"] for node in nodes}) == 2
    assert {d["node_id"] for d in gpus["devices"]} == {node["node_id"] for node in nodes}


def test_two_jobs_run_at_once_one_on_each_node(
    gateway: GatewayProcess, api: Api, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "go")
    code = "import os\nprint('cuda=' + os.environ['CUDA_VISIBLE_DEVICES'], flush=True)\n"
    try:
        ids = [api.submit(code + gate.code) for _ in range(2)]
        running = [api.wait_status(task_id, "running", timeout_s=60) for task_id in ids]
        assert sorted(task["gpu_ids"][0] for task in running) == [0, 1]
        nodes = {_node_of(gateway, task_id) for task_id in ids}
        assert len(nodes) == 2  # Ray put each on the node that had a free GPU
    finally:
        gate.open()
    for task_id in ids:
        task = api.wait_status(task_id, "completed", "failed", timeout_s=60)
        assert task["status"] == "completed", task
        assert task["stdout"] == "cuda=0\n"  # each node's only GPU, as Ray numbers it there


def test_more_gpus_than_any_node_has_fail_at_once(api: Api) -> None:
    """Two GPUs in the cluster, but not on one node: Ray would wait for such a node forever."""
    task = api.post("/run/sync", json={"code": "print('never')", "gpus": 2}).json()
    assert task["status"] == "failed" and task["failure_reason"] == "spawn_error", task
    assert "no Ray node has 2 GPUs (the most on one node: 1)" in task["error"]
    assert api.get("/gpu/pool").json()["available_gpus"] == [0, 1]


# -- --job-user on the nodes (a root gateway, Ray workers as root) ---------------------------
WHO_AM_I_JOB = """
import os, sys
try:
    open(sys.argv[1]).read()
    token = "read"
except OSError as exc:
    token = type(exc).__name__
open("mine.txt", "w").write("written on the node")
print(os.getuid(), os.environ["USER"], token)
"""

# Every other actor's folder on this node (a job, or a warm model's worker): none can be
# listed, and none of the names a job could guess opens.
PRYING_JOB = """
import glob, os
mine = os.environ["VRUNGPU_WORKSPACE"]
opened = []
for folder in glob.glob("/tmp/vrungpu-*"):
    if mine.startswith(folder) or "vrungpu-pg-" in folder:  # a test suite's PostgreSQL
        continue
    for name in ("", "stdout.log", "stderr.log", "worker.log", "workspace", "model"):
        path = os.path.join(folder, name)
        try:
            os.listdir(path) if os.path.isdir(path) else open(path).read()
            opened.append(path)
        except OSError:
            pass
others = 0
for pid in filter(str.isdigit, os.listdir("/proc")):  # other tasks' processes, by their uids
    try:
        uid = int(open(f"/proc/{pid}/status").read().split("Uid:")[1].split()[0])
        if uid >= 2**30 and uid != os.getuid():
            others += 1
            os.readlink(f"/proc/{pid}/cwd")
            opened.append(f"/proc/{pid}/cwd")
    except (OSError, IndexError, ValueError):
        pass
print(len(glob.glob("/tmp/vrungpu-*")) > 1 and others > 0, opened)
"""

# A model that makes its result a link to a file it must not read (the gateway's token).
LINKING_HANDLER = """
import os, sys

def load(model_dir):
    sys.modules["__main__"]._write_result = lambda path, result: os.symlink(result, path)
    return None

def predict(model, data):
    return data["target"]
"""

WHO_AM_I_HANDLER = """
import os

def load(model_dir):
    return model_dir

def predict(model, data):
    try:
        open(os.path.join(model, "handler.py"), "a").close()
        change = "done"
    except OSError as exc:
        change = type(exc).__name__
    return {"uid": os.getuid(), "change model": change}
"""


@needs_root
@needs_system_python
@needs_readable_checkout
def test_jobs_and_model_workers_run_as_the_job_user_on_the_nodes(
    cluster: str, open_base: Path
) -> None:
    gw = GatewayProcess(
        open_base / "data",
        token="",
        extra=[
            "--backend",
            "ray",
            "--ray-address",
            cluster,
            "--python",
            SYSTEM_PYTHON,
            "--job-user",
            "nobody",
        ],  # fmt: skip
        env=RAY_ENV,
    ).start()
    try:
        token = str(gw.data_dir / "token")
        task = gw.api.post("/run/sync", json={"code": WHO_AM_I_JOB, "args": [token]}).json()
        assert task["status"] == "completed", task
        own = JobUser.named("nobody").for_task(task["task_id"]).uid  # its own, nobody's rights
        assert task["stdout"].split() == [str(own), "nobody", "PermissionError"]
        got = gw.api.get(f"/task/{task['task_id']}/files/mine.txt")
        assert got.status_code == 200 and got.text == "written on the node"

        files = [("model_file", ("w.txt", b"1")), ("files", ("handler.py", WHO_AM_I_HANDLER))]
        model = gw.api.post("/model/register", files=files, data={"name": "who"}).json()
        res = gw.api.post(
            f"/model/{model['model_id']}/inference", json={"input_data": {}, "sync": True}
        )
        assert res.status_code == 200 and res.json()["status"] == "completed", res.text
        assert res.json()["result"]["uid"] in TASK_IDS
        assert res.json()["result"]["change model"] == "PermissionError"

        # while that model's worker is warm on its node, a job pries at every actor's folder
        prying = gw.api.post("/run/sync", json={"code": PRYING_JOB}).json()
        assert prying["status"] == "completed", prying
        assert prying["stdout"].strip() == "True []"

        files = [("model_file", ("w.txt", b"1")), ("files", ("handler.py", LINKING_HANDLER))]
        linking = gw.api.post("/model/register", files=files, data={"name": "links"}).json()
        res = gw.api.post(
            f"/model/{linking['model_id']}/inference",
            json={"input_data": {"target": token}, "sync": True},
        )
        task = res.json()
        assert task["status"] == "failed", task
        assert "not a regular file of the model worker's own" in task["error"]
        result = gw.api.get(f"/task/{task['task_id']}/files/result.json")
        assert result.status_code == 404 and gw.token not in result.text
        for model_id in (model["model_id"], linking["model_id"]):
            assert gw.api.delete(f"/model/{model_id}").status_code == 200
    finally:
        gw.stop()

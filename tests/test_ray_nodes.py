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

pytest.importorskip("ray", reason="--backend ray needs the ray package (the ray extra)")
pytestmark = pytest.mark.slow  # two raylets start in 10-60 s


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    if not RAY_CLI.exists():
        pytest.skip(f"the ray command is not installed beside {sys.executable}")
    with ray_cluster(gpus_per_node=(1, 1)) as address:
        gw = GatewayProcess(
            tmp_path_factory.mktemp("ray-nodes"),
            extra=["--backend", "ray", "--ray-address", address],
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

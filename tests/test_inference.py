"""Inference against a real gateway: built-in and custom handlers, warm workers (reuse, LRU,
idle timeout, queue pressure, crashes, timeouts, deletion) and the mnist example end to end."""

from __future__ import annotations

import hashlib
import io
import pickle
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.model_helpers import (
    infer,
    register_bytes,
    register_plain,
    torchscript_bytes,
    wait_no_workers,
    workers,
)
from tests.support import REPO, Api, GatewayProcess, pid_alive, wait_for

torch = pytest.importorskip("torch")

Start = Callable[..., GatewayProcess]


def _linear() -> Any:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh())


def _close(got: Any, want: Any) -> bool:
    return bool(torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-5))


def test_torchscript_model_sync_async_and_warm_reuse(api: Api) -> None:
    module = _linear()
    model = register_bytes(api, "ts", "scripted.pt", torchscript_bytes(module, torch.zeros(1, 4)))
    rows = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]]
    expected = module(torch.tensor(rows)).tolist()

    first = infer(api, model["model_id"], {"inputs": rows})
    assert first["status"] == "completed", first
    assert first["task_type"] == "inference" and first["model_id"] == model["model_id"]
    assert _close(first["result"]["outputs"], expected)
    assert "loaded the model" in first["stdout"] and first["gpu_ids"] == [0]
    pool = workers(api)
    [worker] = pool["workers"]
    assert worker["handler"] == "torchscript" and pool["worker_starts"] == 1
    assert api.get("/gpu/pool").json()["busy_gpus"] == {worker["worker_id"]: 0}
    assert api.get(f"/model/{model['model_id']}").json()["warm"] is True

    res = api.post(f"/model/{model['model_id']}/inference", json={"input_data": rows})
    assert res.status_code == 202
    queued = res.json()
    assert queued["status"] == "pending" and model["name"] in queued["message"]
    done = api.wait_status(queued["task_id"], "completed", "failed")
    assert done["status"] == "completed" and done["result"]["outputs"] == first["result"]["outputs"]
    assert "loaded the model" not in done["stdout"]
    again = workers(api)
    assert again["worker_starts"] == 1 and again["workers"][0]["pid"] == worker["pid"]
    assert again["workers"][0]["requests"] == 2
    listed = api.get("/tasks", params={"task_type": "inference"})
    assert listed.headers["X-Total-Count"] == "2"


def test_pickled_module_and_state_dict_without_handler(api: Api) -> None:
    module = _linear()
    whole, weights = io.BytesIO(), io.BytesIO()
    torch.save(module, whole)
    torch.save(module.state_dict(), weights)
    served = register_bytes(api, "whole", "whole.pth", whole.getvalue())
    task = infer(api, served["model_id"], {"inputs": [[1, 1, 1, 1]]}, device="cpu")
    assert task["status"] == "completed" and task["device"] == "cpu" and task["gpu_ids"] == []
    assert _close(task["result"]["outputs"], module(torch.ones(1, 4)).tolist())
    bad_input = infer(api, served["model_id"], {"inputs": "text"}, device="cpu")
    assert bad_input["status"] == "failed" and "inputs" in bad_input["error"]

    plain = register_bytes(api, "weights", "model.pt", weights.getvalue())
    failed = infer(api, plain["model_id"], {"inputs": [[1, 1, 1, 1]]})
    assert failed["status"] == "failed" and "state_dict" in failed["error"]
    assert "handler.py" in failed["error"] and failed["failure_reason"] == "exit_code"


def test_torch_export_program_and_pickled_predictor_without_handler(api: Api) -> None:
    module = _linear()
    example = torch.ones(1, 4)
    program = io.BytesIO()
    torch.export.save(torch.export.export(module, (example,)), program)
    exported = register_bytes(api, "exported", "model.pt2", program.getvalue())
    task = infer(api, exported["model_id"], {"inputs": [[1, 1, 1, 1]]}, device="cpu")
    assert task["status"] == "completed", task["error"]
    assert _close(task["result"]["outputs"], module(example).tolist())

    linear_model = pytest.importorskip("sklearn.linear_model")
    regression = linear_model.LinearRegression().fit([[0.0], [1.0], [2.0]], [1.0, 3.0, 5.0])
    pickled = register_bytes(api, "regression", "model.pkl", pickle.dumps(regression))
    task = infer(api, pickled["model_id"], {"inputs": [[3.0], [10.0]]}, device="cpu")
    assert task["status"] == "completed", task["error"]
    assert _close(task["result"]["predictions"], [7.0, 21.0])
    no_predict = register_bytes(api, "no-predict", "model.pkl", pickle.dumps({"w": 1}))
    failed = infer(api, no_predict["model_id"], {"inputs": [[1.0]]}, device="cpu")
    assert failed["status"] == "failed" and "no predict() method" in failed["error"]


def test_custom_handler_output_errors_and_crashes(gateway: GatewayProcess, api: Api) -> None:
    model_id = register_plain(api, scale=3.0)["model_id"]
    ok = infer(api, model_id, {"x": [1, 2]}, gpu_id=1)
    assert ok["status"] == "completed" and ok["result"]["y"] == [3.0, 6.0]
    assert ok["gpu_ids"] == [1] and api.get("/gpu/pool").json()["available_gpus"] == [0]
    assert "loading from" in ok["stdout"] and "scaling 2 values" in ok["stdout"]
    assert "a warning" in ok["stderr"]
    pid = ok["result"]["pid"]

    failed = infer(api, model_id, {"fail": "negative size"})
    assert failed["status"] == "failed"
    assert failed["error"].endswith("ValueError: bad input: negative size"), failed["error"]
    assert "Traceback" in failed["stderr"]
    assert infer(api, model_id, {"x": [1]})["result"]["pid"] == pid  # the worker stayed usable

    crashed = infer(api, model_id, {"crash": True})
    assert crashed["status"] == "failed" and "exited with code 3" in crashed["error"], crashed
    assert wait_for(lambda: not pid_alive(pid), what="crashed worker gone")
    replaced = infer(api, model_id, {"x": [1]})
    assert replaced["status"] == "completed" and replaced["result"]["pid"] != pid
    assert workers(api)["worker_starts"] == 2
    inputs = sorted(p.name for p in (gateway.data_dir / "workspaces").glob("*/input.json"))
    assert len(inputs) == 5  # every input reached the model as a JSON file


def test_input_data_is_required_and_validated(api: Api) -> None:
    model_id = register_plain(api)["model_id"]
    route = f"/model/{model_id}/inference"
    for body in (
        {},
        {"input_data": None},
        {"input_data": {}, "timeout": -1},
        {"input_data": {}, "gpu_id": 7},
        {"input_data": {}, "sync": "maybe"},
        {"input_data": {}, "device": "tpu"},
    ):
        res = api.post(route, json=body)
        assert res.status_code == 400, (body, res.text)
    assert api.post(route, json={}).json()["code"] == "missing_input"
    assert (
        api.post(route, data=b"[1]", headers={"Content-Type": "application/json"}).status_code
        == 400
    )
    assert api.get("/tasks").headers["X-Total-Count"] == "0"


def test_lru_eviction(start_gateway: Start) -> None:
    api = start_gateway(extra=["--max-warm-models", "2"]).api
    ids = [register_plain(api, name=f"m{i}")["model_id"] for i in range(3)]
    pids = [infer(api, model_id, {"x": [1]})["result"]["pid"] for model_id in ids[:2]]
    infer(api, ids[0], {"x": [1]})  # m0 used last: m1 is the least recently used
    third = infer(api, ids[2], {"x": [1]})["result"]["pid"]
    assert wait_for(lambda: not pid_alive(pids[1]), what="LRU worker stopped")
    warm = {w["model_id"]: w["pid"] for w in workers(api)["workers"]}
    assert warm == {ids[0]: pids[0], ids[2]: third}
    assert workers(api)["worker_starts"] == 3


def test_idle_timeout_stops_the_worker_and_frees_its_slot(start_gateway: Start) -> None:
    api = start_gateway(extra=["--worker-idle-timeout", "1"]).api
    model_id = register_plain(api)["model_id"]
    pid = infer(api, model_id, {"x": [1]})["result"]["pid"]
    pool = wait_no_workers(api)  # idle for 1 s: the worker stops and frees its slot
    assert pool["worker_starts"] == 1 and not pid_alive(pid)
    assert api.get("/gpu/pool").json()["busy_gpus"] == {}


def test_more_models_than_warm_workers_are_all_served(start_gateway: Start) -> None:
    api = start_gateway(extra=["--max-warm-models", "1"]).api
    ids = [register_plain(api, name=f"m{i}", scale=i + 1)["model_id"] for i in range(3)]
    submitted = []
    for i in range(6):
        body = {"input_data": {"x": [1], "sleep": 0.1}}
        res = api.post(f"/model/{ids[i % 3]}/inference", json=body)
        submitted.append((i % 3 + 1, res.json()["task_id"]))
    for scale, task_id in submitted:
        done = api.wait_status(task_id, "completed", "failed", timeout_s=60)
        assert done["status"] == "completed" and done["result"]["y"] == [float(scale)], done
    live = [w for w in workers(api)["workers"] if w["state"] != "stopping"]
    assert len(live) == 1


def test_queue_is_respected_both_ways(start_gateway: Start, tmp_path: Path) -> None:
    api = start_gateway(gpus="sim:1").api
    model_id = register_plain(api)["model_id"]
    pid = infer(api, model_id, {"x": [1]})["result"]["pid"]
    # A training task that needs the only GPU: the idle warm worker makes way at once.
    train = api.post("/run/sync", json={"code": "print('trained')", "device": "gpu"}).json()
    assert train["status"] == "completed" and train["gpu_ids"] == [0]
    assert not pid_alive(pid) and workers(api)["workers"] == []
    # While training holds the GPU, inference waits in the queue for it.
    gate = tmp_path / "go"
    code = f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.05)"
    busy = api.submit(code, device="gpu")
    api.wait_status(busy, "running")
    waiting = api.post(f"/model/{model_id}/inference", json={"input_data": {"x": [2]}}).json()
    task = api.wait_status(waiting["task_id"], "queued")
    assert task["started_at"] is None and workers(api)["workers"][0]["state"] == "starting"
    gate.write_text("")
    done = api.wait_status(waiting["task_id"], "completed", "failed")
    assert done["status"] == "completed" and done["result"]["y"] == [4.0]
    assert api.task(busy)["status"] == "completed"


def test_queued_inference_survives_a_restart(start_gateway: Start, tmp_path: Path) -> None:
    gateway = start_gateway(gpus="sim:1")
    api = gateway.api
    model_id = register_plain(api)["model_id"]
    code = f"import os, time\nwhile not os.path.exists({str(tmp_path / 'go')!r}): time.sleep(0.05)"
    busy = api.submit(code, device="gpu")
    api.wait_status(busy, "running")
    res = api.post(f"/model/{model_id}/inference", json={"input_data": {"x": [3]}})
    task_id = res.json()["task_id"]
    api.wait_status(task_id, "queued")
    api = gateway.restart().api
    assert api.task(busy)["status"] == "running"  # the job lives on; the new gateway adopts it
    assert api.task(task_id)["status"] == "queued"  # behind it, for its GPU
    (tmp_path / "go").touch()
    assert api.wait_status(busy, "completed", "failed")["status"] == "completed"
    done = api.wait_status(task_id, "completed", "failed")
    assert done["status"] == "completed" and done["result"]["y"] == [6.0], done


def test_timeout_cancel_and_delete_while_warm(gateway: GatewayProcess, api: Api) -> None:
    model_id = register_plain(api)["model_id"]
    pid = infer(api, model_id, {"x": [1]})["result"]["pid"]
    slow = infer(api, model_id, {"sleep": 30}, timeout=1)
    assert slow["status"] == "failed" and slow["failure_reason"] == "timeout"
    assert slow["error"] == "Timeout after 1 seconds"
    assert wait_for(lambda: not pid_alive(pid), what="timed-out worker stopped")

    route = f"/model/{model_id}/inference"
    busy = api.post(route, json={"input_data": {"sleep": 30}}).json()["task_id"]
    api.wait_status(busy, "running", timeout_s=30)
    behind = api.post(route, json={"input_data": {"x": [1]}}).json()["task_id"]
    assert api.wait_status(behind, "queued")["queue_position"] is None
    assert api.post(f"/task/{behind}/cancel").json()["status"] == "cancelled"
    [worker] = wait_for(
        lambda: [w for w in workers(api)["workers"] if w["state"] == "ready"], what="worker loaded"
    )
    worker_pid = worker["pid"]

    deleted = api.delete(f"/model/{model_id}")
    assert deleted.status_code == 200 and deleted.json()["unloaded_workers"] == 1
    assert not pid_alive(worker_pid)
    failed = api.wait_status(busy, "failed")
    assert "deleted" in failed["error"], failed
    assert workers(api)["workers"] == [] and api.get("/gpu/pool").json()["busy_gpus"] == {}
    assert not (gateway.data_dir / "models" / model_id).exists()


# -- the mnist example, from training to served predictions ----------------------------------
def _zip_example(dest: Path) -> Path:
    source = REPO / "examples" / "mnist_project"
    with zipfile.ZipFile(dest, "w") as archive:
        for path in sorted(source.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.name != "model.pt":
                archive.write(path, f"mnist_project/{path.relative_to(source)}")
    return dest


def _train_register_predict(api: Api, tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    archive = _zip_example(tmp_path / "mnist_project.zip")
    with open(archive, "rb") as fh:
        res = api.post(
            "/run/project", files={"file": fh}, data={"entry_point": "train.py", "timeout": "600"}
        )
    assert res.status_code == 202, res.text
    trained = api.wait_status(res.json()["task_id"], "completed", "failed", timeout_s=600)
    assert trained["status"] == "completed", trained["stderr"]
    assert "Test accuracy" in trained["stdout"]

    res = api.post(
        "/model/register",
        json={
            "name": "mnist",
            "task_id": trained["task_id"],
            "path": "model.pt",
            "model_type": "classifier",
        },
    )
    assert res.status_code == 201, res.text
    model = res.json()
    assert {"model.pt", "handler.py", "model.py", "utils.py", "config.json"} <= set(model["files"])
    assert model["handler"] == "handler.py" and model["task_id"] == trained["task_id"]

    digits = load_digits()
    images = [image.tolist() for image in digits.images[-50:]]  # held out: the test split
    task = infer(api, model["model_id"], {"images": images}, timeout=300)
    assert task["status"] == "completed", task["stderr"]
    predictions = task["result"]["predictions"]
    assert len(predictions) == 50 and all(type(p) is int for p in predictions)
    correct = sum(p == int(t) for p, t in zip(predictions, digits.target[-50:], strict=True))
    assert correct >= 45, f"{correct}/50 right"

    download = api.get(f"/model/{model['model_id']}/download")
    digest = hashlib.sha256(download.content).hexdigest()
    assert digest == model["sha256"] == download.headers["X-Content-SHA256"]
    original = api.get(f"/task/{trained['task_id']}/files/model.pt").content
    assert hashlib.sha256(original).hexdigest() == digest

    assert api.delete(f"/model/{model['model_id']}").status_code == 200
    assert api.get(f"/model/{model['model_id']}").status_code == 404
    assert workers(api)["workers"] == []


@pytest.mark.slow
def test_mnist_example_trained_registered_served_and_deleted(
    gateway: GatewayProcess, api: Api, tmp_path: Path
) -> None:
    pytest.importorskip("sklearn")
    _train_register_predict(api, tmp_path)
    assert not any((gateway.data_dir / "models").iterdir())


@pytest.mark.gpu
@pytest.mark.slow
def test_mnist_example_on_a_real_gpu(start_gateway: Start, tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    gateway = start_gateway(gpus="auto")
    _train_register_predict(gateway.api, tmp_path)
    shutil.rmtree(tmp_path, ignore_errors=True)

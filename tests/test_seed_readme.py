"""The user's original README (shared/seed/vrungpu-readme.ko.md), run against our gateway.

Its curl commands run as written (``서버IP`` is the gateway's address; the seed server had no
token, so the gateway runs ``--no-auth`` on loopback) and so do its Python examples; the one
line changed is the seed's ``from client import VrunGPUClient``, a file of its own checkout,
which is ``vrungpu_magic.client`` here.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket

from tests.support import GatewayProcess, wait_for

SEED_ASYNC = """curl -X POST http://서버IP:9825/run/async \\
  -H "Content-Type: application/json" \\
  -d '{
    "code": "import time\\nfor i in range(10):\\n    print(f\\"[PROGRESS:{(i+1)*10}:Step {i+1}/10]\\")\\n    time.sleep(1)",
    "timeout": 300
  }'"""  # noqa: E501 - the seed's command, as written


@pytest.fixture(scope="module")
def seed_gateway(tmp_path_factory: pytest.TempPathFactory) -> Any:
    gw = GatewayProcess(tmp_path_factory.mktemp("seed"), token=None).start()
    yield gw
    gw.stop()


@pytest.fixture
def curl(seed_gateway: GatewayProcess, tmp_path: Path) -> Callable[[str], Any]:
    """Run one of the README's curl commands as written; its parsed JSON (or raw bytes)."""
    host = seed_gateway.url.removeprefix("http://")

    def run(command: str) -> Any:
        argv = shlex.split(command.replace("서버IP:9825", host))
        out = subprocess.run(argv, cwd=tmp_path, capture_output=True, check=True, timeout=120)
        try:
            return json.loads(out.stdout)
        except ValueError:
            return out.stdout

    return run


def test_server_status_and_gpu_pool(curl: Callable[[str], Any]) -> None:
    info = curl("curl http://서버IP:9825/")
    assert info["service"] == "VrunGPU" and info["status"] == "running"
    assert {"version", "gpu_count", "available_gpus", "total_tasks", "total_models"} <= set(info)
    assert set(info["storage"]) == {"workspaces", "models", "database"}
    pool = curl("curl http://서버IP:9825/gpu/pool")
    assert pool["total_gpus"] == 2 and set(pool) >= {"available_gpus", "busy_gpus"}


def test_sync_async_and_gpu_choice(
    curl: Callable[[str], Any], seed_gateway: GatewayProcess
) -> None:
    # "2. 동기 실행": torch on GPU 0; this host's GPUs are simulated, so the job itself may fail
    # on CUDA, but the request is the seed's and the answer is the task
    sync = curl(
        """curl -X POST http://서버IP:9825/run/sync \\
  -H "Content-Type: application/json" \\
  -d '{
    "code": "import torch\\nprint(torch.cuda.get_device_name(0))",
    "timeout": 30
  }'""".replace("\\\n", " ")
    )
    assert sync["status"] in ("completed", "failed") and sync["timeout"] == 30
    # "3. 비동기 실행"
    submitted = curl(SEED_ASYNC.replace("\\\n", " "))
    assert submitted["status"] == "pending" and submitted["task_id"]
    task_id = submitted["task_id"]
    task = wait_for(
        lambda: (t := curl(f"curl http://서버IP:9825/task/{task_id}"))["progress"] >= 10 and t,
        30,
        what="the seed's progress lines read",
    )
    assert task["progress_message"].startswith("Step ")
    # "4. 특정 GPU 지정"
    on_one = curl(
        """curl -X POST http://서버IP:9825/run/sync -H "Content-Type: application/json" -d '{
    "code": "import os\\nprint(os.environ[\\"CUDA_VISIBLE_DEVICES\\"])",
    "gpu_id": 1
  }'"""
    )
    assert on_one["gpu_id"] == 1 and on_one["stdout"] == "1\n"
    seed_gateway.api.post(f"/task/{task_id}/cancel")


def test_parallel_runs_without_a_content_type(curl: Callable[[str], Any]) -> None:
    # "병렬 실행": `curl -d` with no -H sends a form content type; the body is still the JSON
    first = curl("""curl -X POST http://서버IP:9825/run/async -d '{"code": "print(1)"}'""")
    second = curl("""curl -X POST http://서버IP:9825/run/async -d '{"code": "print(2)"}'""")
    for submitted, out in ((first, "1\n"), (second, "2\n")):
        task_id = submitted["task_id"]
        done = wait_for(
            lambda t=task_id: (
                (x := curl(f"curl http://서버IP:9825/task/{t}"))["status"]
                in ("completed", "failed")
                and x
            ),
            30,
        )
        assert done["stdout"] == out


def test_tasks_is_a_bare_list(curl: Callable[[str], Any]) -> None:
    data = curl("curl http://서버IP:9825/tasks")
    assert isinstance(data, list) and data[:3] == data[0:3]
    assert all("task_id" in t and "status" in t for t in data)


def test_project_upload_with_curl_and_python(
    curl: Callable[[str], Any], seed_gateway: GatewayProcess, tmp_path: Path
) -> None:
    project = tmp_path / "my_project"
    (project / "data").mkdir(parents=True)
    (project / "model.py").write_text("def make():\n    return 'model'\n")
    (project / "data" / "train.csv").write_text("x,y\n1,2\n")
    (project / "train.py").write_text(
        "from model import make\nprint(make(), open('data/train.csv').read().split()[1])\n"
    )
    # "방법 2: 폴더 안에서 파일들만 압축"
    subprocess.run(["zip", "-qr", "../my_project.zip", "."], cwd=project, check=True)
    submitted = curl(
        'curl -X POST http://서버IP:9825/run/project -F "file=@my_project.zip" '
        '-F "entry_point=train.py" -F "timeout=3600"'
    )
    api = seed_gateway.api
    done = api.wait_status(submitted["task_id"], "completed", "failed")
    assert done["stdout"] == "model 1,2\n", done
    # "Python으로 업로드"
    with open(tmp_path / "my_project.zip", "rb") as f:
        response = requests.post(
            f"{seed_gateway.url}/run/project",
            files={"file": f},
            data={"entry_point": "train.py", "timeout": 3600, "gpu_id": 0},
        )
    task_id = response.json()["task_id"]
    assert api.wait_status(task_id, "completed", "failed")["gpu_id"] == 0


def test_models_register_list_download_delete_and_inference(
    curl: Callable[[str], Any], tmp_path: Path
) -> None:
    (tmp_path / "model.pt").write_bytes(b"\x80\x04weights" * 100)
    model = curl(
        'curl -X POST http://서버IP:9825/model/register -F "name=mnist-classifier-v1" '
        '-F "model_file=@model.pt" -F "model_type=classifier" -F "framework=pytorch"'
    )
    assert {"model_id", "name", "model_type", "framework", "status", "file_size", "created_at"} <= (
        set(model)
    )
    assert model["status"] == "ready" and model["file_size"] == 900
    model_id = model["model_id"]
    listed = curl("curl http://서버IP:9825/models")
    assert model_id in json.dumps(listed)
    assert curl(f"curl http://서버IP:9825/model/{model_id}")["name"] == "mnist-classifier-v1"
    curl(f"curl -O http://서버IP:9825/model/{model_id}/download")  # saved as ./download
    assert (tmp_path / "download").read_bytes() == b"\x80\x04weights" * 100
    started = curl(
        f"""curl -X POST http://서버IP:9825/model/{model_id}/inference \\
  -H "Content-Type: application/json" \\
  -d '{{
    "input_data": {{"image": "base64...", "batch_size": 1}},
    "timeout": 60
  }}'""".replace("\\\n", " ")
    )
    assert started["status"] == "pending" and started["task_id"] and started["message"]
    curl(f"curl -X DELETE http://서버IP:9825/model/{model_id}")
    missing = curl(f"curl http://서버IP:9825/model/{model_id}")
    assert missing["code"] == "model_not_found"


def test_stats_shape(curl: Callable[[str], Any]) -> None:
    stats = curl("curl http://서버IP:9825/stats")
    assert {"by_status", "avg_duration", "last_24h"} <= set(stats["tasks"])
    assert {"by_status", "total"} <= set(stats["models"])
    assert {"usage_count", "current"} <= set(stats["gpu"])


def test_python_client_example(seed_gateway: GatewayProcess, tmp_path: Path) -> None:
    from vrungpu_magic.client import VrunGPUClient  # the seed: `from client import ...`

    client = VrunGPUClient(seed_gateway.url)
    assert client.get_gpu_info()["available"]
    result = client.run_sync("print('Hello GPU!')")
    assert result["stdout"] == "Hello GPU!\n"
    train_code = "print('[PROGRESS:50:half]')\nprint('trained')"
    task_id = client.run_async(train_code)
    result = client.wait_for_task(task_id)
    assert result["stdout"].endswith("trained\n")
    (tmp_path / "train.py").write_text("print('from a file')\n")
    task_id = client.run_file(str(tmp_path / "train.py"), timeout=600, gpu_id=0)
    result = client.wait_for_task(task_id)
    assert result["stdout"] == "from a file\n" and result["gpu_id"] == 0
    assert isinstance(client.list_tasks(), list)


def test_websocket_example(seed_gateway: GatewayProcess) -> None:
    ws = websocket.create_connection(seed_gateway.url.replace("http", "ws") + "/ws", timeout=30)
    try:
        assert json.loads(ws.recv())["type"] == "init"
        task_id = seed_gateway.api.submit("print('live line')")
        lines = []
        while "live line" not in lines:
            data = json.loads(ws.recv())
            if data["type"] == "task_output" and data["task_id"] == task_id:
                lines.append(data["line"])  # console.log(data.line)
    finally:
        ws.close()

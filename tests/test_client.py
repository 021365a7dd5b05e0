"""VrunGPUClient against a real gateway: the seed's methods and ours."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from tests.support import TOKEN, GatewayProcess
from vrungpu_magic.client import VrunGPUClient, VrunGPUError


@pytest.fixture
def client(gateway: GatewayProcess) -> VrunGPUClient:
    return VrunGPUClient(gateway.url, token=TOKEN)


def test_seed_methods(client: VrunGPUClient) -> None:
    assert client.check_health()["service"] == "VrunGPU"
    assert len(client.get_gpu_info()["devices"]) == 2
    assert client.get_gpu_pool()["total_gpus"] == 2
    result = client.run_sync("print('Hello GPU!')")
    assert result["stdout"] == "Hello GPU!\n"
    task_id = client.run_async("print('[PROGRESS:50:half]')\nprint('later')", timeout=60)
    done = client.wait_for_task(task_id, timeout=30, poll_interval=0.2)
    assert done["status"] == "completed" and done["stdout"].endswith("later\n")
    assert client.get_task_status(task_id)["progress"] == 100
    assert {t["task_id"] for t in client.list_tasks()} >= {task_id, result["task_id"]}
    results = client.run_parallel(["print(1)", "print(2)"], timeout=60)
    assert [r["stdout"] for r in results] == ["1\n", "2\n"]


def test_run_file_and_project(client: VrunGPUClient, tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text("print('from file')")
    done = client.wait_for_task(client.run_file(script, timeout=60, gpu_id=1), timeout=30)
    assert done["stdout"] == "from file\n" and done["gpu_ids"] == [1]
    proj = tmp_path / "proj"
    (proj / "pkg").mkdir(parents=True)
    (proj / "main.py").write_text("import os\nfrom pkg import x\nprint(x, sorted(os.listdir('.')))")
    (proj / "pkg" / "__init__.py").write_text("x = 'pkg-ok'")
    (proj / "big.ckpt").write_text("ignored")
    (proj / ".vrungpuignore").write_text("*.ckpt\n")
    (proj / "__pycache__").mkdir()
    (proj / "__pycache__" / "junk.pyc").write_text("x")
    seen: list[tuple[int, int]] = []
    task_id = client.run_project(proj, "main.py", on_progress=lambda a, b: seen.append((a, b)))
    done = client.wait_for_task(task_id, timeout=30)
    assert done["stdout"] == "pkg-ok ['.vrungpuignore', 'main.py', 'pkg']\n"
    assert seen and seen[-1][0] == seen[-1][1]
    archive = tmp_path / "p.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("run.py", "print('zip ok')")
    done = client.wait_for_task(client.run_project(archive, "run.py"), timeout=30)
    assert done["stdout"] == "zip ok\n"


def test_cancel_logs_files_download(client: VrunGPUClient, tmp_path: Path) -> None:
    task_id = client.run_async("import time\nprint('hi', flush=True)\ntime.sleep(60)")
    with pytest.raises(TimeoutError):
        client.wait_for_task(task_id, timeout=0.5, poll_interval=0.1)
    assert client.cancel(task_id)["status"] == "cancelled"
    assert client.wait_for_task(task_id, timeout=5)["status"] == "cancelled"
    assert client.logs(task_id) == "hi\n" and client.logs(task_id, tail=1) == "hi\n"
    made = client.run_sync("open('model.pt','wb').write(b'abc')")
    assert [f["path"] for f in client.files(made["task_id"])] == ["main.py", "model.pt"]
    path = client.download(made["task_id"], "model.pt", tmp_path)
    assert path == tmp_path / "model.pt" and path.read_bytes() == b"abc"


def test_errors_carry_status_and_detail(client: VrunGPUClient, gateway: GatewayProcess) -> None:
    with pytest.raises(VrunGPUError) as err:
        client.get_task_status("nope")
    assert err.value.status == 404 and err.value.code == "task_not_found"
    with pytest.raises(VrunGPUError) as err:
        client.run_async("1", gpu_id=9)
    assert err.value.status == 400 and "gpu_id 9" in err.value.detail
    with pytest.raises(VrunGPUError) as err:
        VrunGPUClient(gateway.url, token="wrong").check_health()
    assert err.value.status == 401
    with pytest.raises(VrunGPUError) as err:
        VrunGPUClient("http://127.0.0.1:9", token=TOKEN).check_health()
    assert err.value.status == 0 and "cannot reach" in str(err.value)


def test_connection_from_environment(gateway: GatewayProcess, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("VRUNGPU_CONFIG", str(tmp_path / "none.json"))
    monkeypatch.setenv("VRUNGPU_URL", gateway.url)
    monkeypatch.setenv("VRUNGPU_TOKEN", TOKEN)
    assert VrunGPUClient().check_health()["gpu_count"] == 2


def test_ids_are_whole_path_segments(client: VrunGPUClient) -> None:
    # "../gpu" must not reach GET /gpu through the task route
    with pytest.raises(VrunGPUError) as err:
        client.get_task_status("../gpu")
    assert err.value.status == 404

"""Real GPUs through NVML and CUDA: run only on a host with an NVIDIA driver."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import REPO, TOKEN, GatewayProcess


def _nvml_gpu_count() -> int:
    """GPUs NVML sees; 0 only where there is no NVIDIA library or driver. Any other NVML error
    (a broken driver on a GPU host) raises, so these tests fail instead of skipping."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except (pynvml.NVMLError_LibraryNotFound, pynvml.NVMLError_DriverNotLoaded):
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_nvml_gpu_count() == 0, reason="needs an NVIDIA GPU and driver"),
]


def test_auto_discovers_real_gpus_with_metrics(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    api = start_gateway(gpus="auto").api
    gpus = api.get("/gpu").json()
    assert gpus["kind"] == "nvml" and len(gpus["devices"]) == _nvml_gpu_count()
    device = gpus["devices"][0]
    assert device["simulated"] is False and device["memory_total_mb"] > 1000
    assert device["uuid"].startswith("GPU-")


def test_job_sees_exactly_its_gpu(start_gateway: Callable[..., GatewayProcess]) -> None:
    pytest.importorskip("torch")
    api = start_gateway(gpus="auto").api
    code = (
        "import os, torch\nassert torch.cuda.is_available()\n"
        "x = torch.randn(1024, 1024, device='cuda')\nprint(torch.cuda.device_count(), "
        "os.environ['CUDA_VISIBLE_DEVICES'], float((x @ x).sum().isfinite()))"
    )
    task = api.post("/run/sync", json={"code": code, "gpu_id": 0, "timeout": 120}).json()
    assert task["status"] == "completed", task["stderr"]
    assert task["stdout"].split() == ["1", "0", "1.0"]


def test_gpus_by_index_keep_only_those_and_refuse_missing_ones(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    count = _nvml_gpu_count()
    api = start_gateway(gpus="0").api
    assert [d["index"] for d in api.get("/gpu").json()["devices"]] == [0]
    cmd = [sys.executable, "-m", "vrungpu_gateway", "--port", "0", "--gpus", f"0,{count}"]
    cmd += ["--data-dir", str(tmp_path / "refused"), "--token", TOKEN]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and f"GPUs [{count}] not found" in done.stderr

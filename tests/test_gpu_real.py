"""Real GPUs through NVML and CUDA: run only on a host with an NVIDIA driver."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support import GatewayProcess


def _nvml_gpu_count() -> int:
    try:
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetCount())
    except Exception:
        return 0


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

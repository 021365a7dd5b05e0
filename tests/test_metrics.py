"""`GET /metrics`: figures that match the API on a real gateway, auth, and task durations."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any, cast

import pytest
import requests
import websocket
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tests.support import Api, Gate, GatewayProcess, wait_for
from vrungpu_gateway.cli import build_parser
from vrungpu_gateway.engine.events import EventBus
from vrungpu_gateway.engine.metrics import GatewayParts, LiveCollector, Prefetched, TaskDurations

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape(api: Api) -> Samples:
    """Every sample of `GET /metrics`, by sample name, then by sorted labels."""
    res = api.get("/metrics")
    assert res.status_code == 200, res.text
    assert res.headers["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(res.text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def by(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: value for labels, value in samples[name].items()}


def one(samples: Samples, name: str) -> float:
    return samples[name][()]


@contextlib.contextmanager
def kernel(api: Api, spec: str) -> Iterator[dict[str, Any]]:
    started = api.post("/api/kernels", json={"name": spec})
    assert started.status_code == 201, started.text
    try:
        yield started.json()
    finally:
        api.delete(f"/api/kernels/{started.json()['id']}")


@contextlib.contextmanager
def ws_client(gateway: GatewayProcess) -> Iterator[websocket.WebSocket]:
    url = gateway.url.replace("http://", "ws://") + f"/ws?token={gateway.token}"
    conn = websocket.create_connection(url, timeout=30)
    try:
        assert '"init"' in conn.recv()
        yield conn
    finally:
        conn.close()


def test_metrics_match_the_api(gateway: GatewayProcess, api: Api, gate: Gate) -> None:
    api.post("/run/sync", json={"code": "print('ok')"})
    api.post("/run/sync", json={"code": "raise SystemExit(3)", "device": "cpu"})
    running = api.submit(gate.code + "print('done')")
    api.wait_status(running, "running")
    with kernel(api, "vrungpu-1gpu"), ws_client(gateway):
        queued = api.submit("print('later')")
        assert api.task(queued)["status"] == "queued"
        stats = api.get("/stats").json()["tasks"]["by_status"]
        assert stats == {"completed": 1, "failed": 1, "running": 1, "queued": 1}

        def tasks_match() -> Samples | None:
            samples = scrape(api)
            figures = {k: int(v) for k, v in by(samples, "vrungpu_tasks", "status").items() if v}
            return samples if figures == stats else None

        samples = wait_for(tasks_match, 10, what="metrics tasks equal to /stats")
        overview = api.get("/").json()
        pool = api.get("/gpu/pool").json()
        gpus = api.get("/gpu").json()["devices"]
        kernels = api.get("/api/kernels").json()

        assert one(samples, "vrungpu_queue_length") == overview["queued_tasks"] == 1
        assert sum(by(samples, "vrungpu_tasks", "status").values()) == overview["total_tasks"]
        held = by(samples, "vrungpu_gpus_held", "holder")
        assert held == {"task": 1, "kernel": 1, "worker": 0}
        assert pool["allocations"] == {running: [0], kernels[0]["id"]: [1]}
        assert one(samples, "vrungpu_gpus") == pool["total_gpus"] == 2
        assert one(samples, "vrungpu_gpus_available") == len(pool["available_gpus"]) == 0
        assert one(samples, "vrungpu_kernels") == len(kernels) == 1
        assert one(samples, "vrungpu_websocket_clients") == 1
        assert set(by(samples, "vrungpu_model_workers", "state").values()) == {0}
        total = {str(g["index"]): g["memory_total_mb"] * 2**20 for g in gpus}
        assert by(samples, "vrungpu_gpu_memory_total_bytes", "gpu") == total
        for name in (  # simulated GPUs vary these from one sample to the next
            "vrungpu_gpu_memory_used_bytes",
            "vrungpu_gpu_utilization_ratio",
            "vrungpu_gpu_temperature_celsius",
        ):
            assert set(by(samples, name, "gpu")) == {"0", "1"}
        (build,) = samples["vrungpu_build_info"]
        assert dict(build)["version"] == overview["version"]

        durations = by(samples, "vrungpu_task_duration_seconds_count", "device")
        assert durations == {"gpu": 1, "cpu": 1}  # the two finished tasks, by device
    gate.open()


def test_metrics_need_the_token_unless_public(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    private = start_gateway(gpus="sim:1")
    assert requests.get(private.url + "/metrics", timeout=10).status_code == 401
    assert scrape(private.api)["vrungpu_gpus"][()] == 1
    public = start_gateway(gpus="sim:1", extra=["--metrics-public"])
    res = requests.get(public.url + "/metrics", timeout=10)
    assert res.status_code == 200 and "vrungpu_tasks" in res.text
    assert requests.get(public.url + "/", timeout=10).status_code == 401


def test_metrics_public_has_an_environment_twin(monkeypatch: pytest.MonkeyPatch) -> None:
    assert build_parser().parse_args([]).metrics_public is False
    monkeypatch.setenv("VRUNGPU_METRICS_PUBLIC", "1")
    assert build_parser().parse_args([]).metrics_public is True


def _update(task_id: str, status: str, started: str | None, device: str = "gpu") -> Any:
    return {
        "type": "task_update",
        "task": {
            "task_id": task_id,
            "status": status,
            "device": device,
            "started_at": started,
            "completed_at": "2026-01-01T00:00:02.500000+00:00",
        },
    }


def test_durations_count_each_run_task_once() -> None:
    bus, registry = EventBus(), CollectorRegistry()
    durations = TaskDurations(bus=bus, registry=registry)
    bus.publish(_update("a", "running", "2026-01-01T00:00:00+00:00"))
    bus.publish(_update("a", "completed", "2026-01-01T00:00:00+00:00"))
    bus.publish(_update("a", "completed", "2026-01-01T00:00:00+00:00"))  # repeated
    bus.publish(_update("b", "cancelled", None, device="cpu"))  # never started
    bus.publish(_update("c", "failed", "2026-01-01T00:00:02+00:00", device="cpu"))
    count = registry.get_sample_value
    assert count("vrungpu_task_duration_seconds_count", {"device": "gpu"}) == 1
    assert count("vrungpu_task_duration_seconds_sum", {"device": "gpu"}) == 2.5
    assert count("vrungpu_task_duration_seconds_count", {"device": "cpu"}) == 1
    durations.unsubscribe()
    bus.publish(_update("d", "completed", "2026-01-01T00:00:00+00:00"))
    assert count("vrungpu_task_duration_seconds_count", {"device": "gpu"}) == 1


def test_env_cache_figures_come_from_its_listing() -> None:
    envs = [{"key": "a", "size_bytes": 300, "last_used": 1.0}, {"key": "b", "size_bytes": 200}]
    cache = SimpleNamespace(max_bytes=1000, listing=lambda: envs)
    collector = LiveCollector(cast(GatewayParts, SimpleNamespace(envs=cache)))
    assert list(collector._envs()) == []  # nothing fetched yet
    collector.prefetched = Prefetched(envs=cache.listing())
    figures = {family.name: family.samples[0].value for family in collector._envs()}
    assert figures == {
        "vrungpu_env_cache_environments": 2,
        "vrungpu_env_cache_bytes": 500,
        "vrungpu_env_cache_max_bytes": 1000,
    }

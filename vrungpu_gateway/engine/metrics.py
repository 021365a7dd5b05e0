"""The gateway's Prometheus metrics: a registry of its own, read from the live state at scrape.

Nothing samples in the background. A scrape first fetches what must stay off the event loop
(task counts from the database, one GPU report), then renders the registry: the collector
reads the rest (queue, holders, clients, workers, kernels) as it is at that moment. Task
durations are the one thing kept between scrapes: a histogram fed by terminal ``task_update``
events on the bus, so it counts the tasks that finished since this gateway started.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from vrungpu_gateway.engine.events import Event, EventBus
from vrungpu_gateway.engine.gpu_monitor import GpuMonitor
from vrungpu_gateway.engine.kernels import KernelManager
from vrungpu_gateway.engine.manager import TaskManager
from vrungpu_gateway.engine.stream_hub import StreamHub
from vrungpu_gateway.engine.workers import WorkerPool, WorkerState
from vrungpu_gateway.protocol import TaskStatus

log = logging.getLogger(__name__)

# From a quick cell to a night's training run.
DURATION_BUCKETS_S = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600, 3 * 3600, 8 * 3600, 24 * 3600)
HOLDER_KINDS = ("task", "kernel", "worker")
SEEN_LIMIT = 4096  # terminal task ids remembered, so a repeated update is observed once

StatusCounts = Callable[[], Awaitable[dict[str, int]]]  # terminal status -> tasks stored


class EnvCacheSource(Protocol):
    """The per-job environment cache, as metrics see it (``pyenvs.EnvCache`` fits)."""

    max_bytes: int

    def listing(self) -> list[dict[str, Any]]: ...  # blocking: key, size_bytes, last_used


@dataclass
class Prefetched:
    """What a scrape reads off the event loop before the registry is rendered."""

    stored: dict[str, int] = field(default_factory=dict)
    gpus: dict[str, Any] = field(default_factory=dict)
    envs: list[dict[str, Any]] | None = None  # None: no environment cache


@dataclass
class GatewayParts:
    """The live objects the collector reads."""

    tasks: TaskManager
    monitor: GpuMonitor
    streams: StreamHub
    workers: WorkerPool
    kernels: KernelManager
    version: str
    envs: EnvCacheSource | None = None


class LiveCollector(Collector):
    """Reads the gateway's state each time the registry is collected."""

    def __init__(self, parts: GatewayParts) -> None:
        self.parts = parts
        self.prefetched = Prefetched()

    def collect(self) -> Iterator[Metric]:
        yield self._build_info()
        yield self._tasks()
        yield _gauge(
            "vrungpu_queue_length",
            "Requests waiting in the scheduler queue (tasks, and kernels or model workers "
            "waiting for a slot)",
            len(self.parts.tasks.scheduler.queued_ids()),
        )
        yield from self._pool()
        yield from self._gpus()
        yield _gauge(
            "vrungpu_websocket_clients",
            "Clients connected to the /ws stream",
            self.parts.streams.client_count,
        )
        yield self._workers()
        yield _gauge("vrungpu_kernels", "Live remote kernels", len(self.parts.kernels.list()))
        yield from self._envs()

    def _build_info(self) -> Metric:
        info = InfoMetricFamily("vrungpu_build", "The gateway's version and GPU backend")
        kind = str(self.parts.monitor.backend.kind)
        info.add_metric([], {"version": self.parts.version, "gpu_kind": kind})
        return info

    def _tasks(self) -> Metric:
        """Stored counts of finished tasks, with live tasks counted by their state now (the
        stored row of a live task may lag its state by a write)."""
        counts = {status.value: 0 for status in TaskStatus}
        for status, count in self.prefetched.stored.items():
            if TaskStatus(status).is_terminal():
                counts[status] = count
        for record in self.parts.tasks.live_records():
            if record.status.is_live():
                counts[record.status.value] += 1
        family = GaugeMetricFamily("vrungpu_tasks", "Tasks by status", labels=["status"])
        for status, count in counts.items():
            family.add_metric([status], count)
        return family

    def _pool(self) -> Iterator[Metric]:
        snapshot = self.parts.tasks.scheduler.snapshot()
        yield _gauge("vrungpu_gpus", "GPUs in the pool", snapshot.total_gpus)
        yield _gauge("vrungpu_gpus_available", "GPUs no one holds", len(snapshot.available_gpus))
        held = dict.fromkeys(HOLDER_KINDS, 0)
        for holder_id, gpu_ids in snapshot.allocations.items():
            kind = str(self.parts.monitor.holders.describe(holder_id)["kind"])
            held[kind] = held.get(kind, 0) + len(gpu_ids)
        family = GaugeMetricFamily(
            "vrungpu_gpus_held", "GPUs held, by kind of holder", labels=["holder"]
        )
        for kind, count in held.items():
            family.add_metric([kind], count)
        yield family
        yield _gauge("vrungpu_cpu_slots", "CPU slots in the pool", snapshot.cpu_slots)
        yield _gauge("vrungpu_cpu_slots_busy", "CPU slots held", len(snapshot.cpu_busy))

    def _gpus(self) -> Iterator[Metric]:
        labels = ["gpu", "name"]
        families = {
            key: GaugeMetricFamily(name, doc, labels=labels)
            for key, name, doc in (
                ("util", "vrungpu_gpu_utilization_ratio", "GPU utilisation (0 to 1)"),
                ("used", "vrungpu_gpu_memory_used_bytes", "GPU memory in use"),
                ("total", "vrungpu_gpu_memory_total_bytes", "GPU memory in all"),
                ("temp", "vrungpu_gpu_temperature_celsius", "GPU temperature"),
            )
        }
        for device in self.prefetched.gpus.get("devices", []):
            values = [str(device["index"]), str(device["name"])]
            families["used"].add_metric(values, device["memory_used_mb"] * 2**20)
            families["total"].add_metric(values, device["memory_total_mb"] * 2**20)
            if device.get("utilization_percent") is not None:
                families["util"].add_metric(values, device["utilization_percent"] / 100)
            if device.get("temperature_c") is not None:
                families["temp"].add_metric(values, device["temperature_c"])
        yield from families.values()

    def _workers(self) -> Metric:
        family = GaugeMetricFamily(
            "vrungpu_model_workers", "Warm model workers, by state", labels=["state"]
        )
        states = {state.value: 0 for state in WorkerState}
        for worker in self.parts.workers.describe()["workers"]:
            states[worker["state"]] = states.get(worker["state"], 0) + 1
        for state, count in states.items():
            family.add_metric([state], count)
        return family

    def _envs(self) -> Iterator[Metric]:
        envs, cache = self.prefetched.envs, self.parts.envs
        if envs is None or cache is None:
            return
        yield _gauge(
            "vrungpu_env_cache_environments", "Per-job environments built and cached", len(envs)
        )
        yield _gauge(
            "vrungpu_env_cache_bytes",
            "Disk used by the per-job environment cache",
            sum(env["size_bytes"] for env in envs),
        )
        yield _gauge(
            "vrungpu_env_cache_max_bytes", "The environment cache's size cap", cache.max_bytes
        )


class TaskDurations:
    """A histogram of run time (start to end) by device, fed by terminal task updates."""

    def __init__(self, *, bus: EventBus, registry: CollectorRegistry) -> None:
        self.histogram = Histogram(
            "vrungpu_task_duration_seconds",
            "Run time of finished tasks, from start to end, since the gateway started",
            ["device"],
            buckets=DURATION_BUCKETS_S,
            registry=registry,
        )
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.unsubscribe = bus.subscribe(self.on_event)

    def on_event(self, event: Event) -> None:
        task = event.get("task") if event.get("type") == "task_update" else None
        if not task or not TaskStatus(task["status"]).is_terminal():
            return
        if not task.get("started_at") or not task.get("completed_at"):
            return  # cancelled while queued: it never ran
        if task["task_id"] in self._seen:
            return
        self._seen[task["task_id"]] = None
        if len(self._seen) > SEEN_LIMIT:
            self._seen.popitem(last=False)
        started = datetime.fromisoformat(task["started_at"])
        ended = datetime.fromisoformat(task["completed_at"])
        duration_s = max(0.0, (ended - started).total_seconds())
        self.histogram.labels(device=task.get("device") or "cpu").observe(duration_s)


class GatewayMetrics:
    """The gateway's registry: live gauges, task durations and the build info."""

    def __init__(self, *, parts: GatewayParts, bus: EventBus, stored: StatusCounts) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.live = LiveCollector(parts)
        self.registry.register(self.live)
        self.durations = TaskDurations(bus=bus, registry=self.registry)
        self._stored = stored

    async def scrape(self, *, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition for an ``Accept`` header: (body, content type)."""
        stored = await self._stored()
        gpus = await self.live.parts.monitor.report()
        cache = self.live.parts.envs
        envs = await asyncio.to_thread(cache.listing) if cache is not None else None
        encoder, content_type = choose_encoder(accept or "")
        # No await from here on: the collector reads this prefetch and the live state at once.
        self.live.prefetched = Prefetched(stored=stored, gpus=gpus, envs=envs)
        return encoder(self.registry), content_type

    def close(self) -> None:
        self.durations.unsubscribe()


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)

"""Live GPU state: metrics from the backend joined with who holds each GPU.

Who holds a slot is told by ``GpuHolders``: each kind of holder that is not a task (remote
kernels, warm model workers) answers for its own ids; any other id is a task's.

One timer for the whole gateway samples every ``interval_s`` while anyone listens and
publishes ``gpu_update`` on the event bus; sampling (NVML) runs off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from vrungpu_gateway.engine.events import EventBus
from vrungpu_gateway.engine.scheduler import Scheduler
from vrungpu_gateway.gpus import GpuBackend

log = logging.getLogger(__name__)

HolderSource = Callable[[str], dict[str, Any] | None]  # holder id -> its description, or None


class GpuHolders:
    """Names the holder of a slot: ``{"kind": "task"|"kernel"|"worker", "id", "owner"?,
    ...}`` (``owner``: the user whose task or kernel it is)."""

    def __init__(self, sources: list[HolderSource] | None = None) -> None:
        self.sources = list(sources or [])

    def describe(self, holder_id: str) -> dict[str, Any]:
        for source in self.sources:
            found = source(holder_id)
            if found is not None:
                return found
        return {"kind": "task", "id": holder_id}

    def line(self, holder_id: str) -> str:
        """``kernel K (session S) of alice`` or ``task T``: for one-line messages."""
        holder = self.describe(holder_id)
        session = f" (session {holder['session']})" if holder.get("session") else ""
        owner = f" of {holder['owner']}" if holder.get("owner") else ""
        return f"{holder['kind']} {holder['id']}{session}{owner}"


class GpuMonitor:
    def __init__(
        self,
        *,
        backend: GpuBackend,
        scheduler: Scheduler,
        bus: EventBus,
        holders: GpuHolders | None = None,
        interval_s: float = 2.0,
    ) -> None:
        self.backend = backend
        self.holders = holders or GpuHolders()
        self.scheduler = scheduler
        self.bus = bus
        self.interval_s = interval_s
        self.listeners = 0  # clients that want gpu_update (the WebSocket layer counts them)
        self._timer: asyncio.Task[None] | None = None

    async def devices(self) -> list[dict[str, Any]]:
        busy = {i for i in self.scheduler.gpu_indices if self.scheduler.gpu_owner(i)}
        infos = await asyncio.to_thread(self.backend.sample, busy)
        devices = []
        for info in infos:
            item = info.as_dict()
            owner = self.scheduler.gpu_owner(info.index)
            item["task_id"] = owner
            item["holder"] = self.holders.describe(owner) if owner else None
            devices.append(item)
        return devices

    async def report(self) -> dict[str, Any]:
        """The `/gpu` body."""
        try:
            devices = await self.devices()
            error = self.backend.error
        except Exception as exc:  # a driver hiccup must not take the route down
            log.warning("GPU sampling failed: %s", exc)
            devices, error = [], f"GPU sampling failed: {exc}"
        return {
            "available": bool(devices),
            "count": len(devices),
            "kind": self.backend.kind,
            "devices": devices,
            "error": error,
        }

    def pool(self) -> dict[str, Any]:
        """The `/gpu/pool` body; on a cluster, also its nodes and the GPUs on each."""
        pool = self.scheduler.snapshot().as_dict()
        nodes = getattr(self.backend, "nodes", None)
        if nodes is not None:
            pool["nodes"] = nodes()
        return pool

    def start(self) -> None:
        if self._timer is None:
            self._timer = asyncio.create_task(self._tick())

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            await asyncio.gather(self._timer, return_exceptions=True)
            self._timer = None

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if self.listeners <= 0:
                continue
            report = await self.report()
            self.bus.publish({"type": "gpu_update", "gpus": report["devices"], "pool": self.pool()})

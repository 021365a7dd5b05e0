"""Live GPU state: metrics from the backend joined with who holds each GPU.

One timer for the whole gateway samples every ``interval_s`` while anyone listens and
publishes ``gpu_update`` on the event bus; sampling (NVML) runs off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from vrungpu_gateway.engine.events import EventBus
from vrungpu_gateway.engine.scheduler import Scheduler
from vrungpu_gateway.gpus import GpuBackend

log = logging.getLogger(__name__)


class GpuMonitor:
    def __init__(
        self, *, backend: GpuBackend, scheduler: Scheduler, bus: EventBus, interval_s: float = 2.0
    ) -> None:
        self.backend = backend
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
            item["task_id"] = self.scheduler.gpu_owner(info.index)
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
        return self.scheduler.snapshot().as_dict()

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

"""GPU routes: `/gpu` (devices with live metrics) and `/gpu/pool` (allocations)."""

from __future__ import annotations

from vrungpu_gateway.api.base import BaseHandler


class GpuHandler(BaseHandler):
    async def get(self) -> None:
        self.write_json(await self.gateway.monitor.report())


class GpuPoolHandler(BaseHandler):
    def get(self) -> None:
        self.write_json(self.gateway.monitor.pool())


ROUTES = [
    (r"/gpu", GpuHandler),
    (r"/gpu/pool", GpuPoolHandler),
]

"""Service routes: `/`, `/health`, `/stats`."""

from __future__ import annotations

from vrungpu_gateway.api.base import BaseHandler


class RootHandler(BaseHandler):
    async def get(self) -> None:
        self.write_json(await self.gateway.overview())


class HealthHandler(BaseHandler):
    public = True

    def get(self) -> None:
        self.write_json({"status": "ok"})


class StatsHandler(BaseHandler):
    async def get(self) -> None:
        self.write_json(await self.gateway.stats())


ROUTES = [
    (r"/", RootHandler),
    (r"/health", HealthHandler),
    (r"/stats", StatsHandler),
]

"""Service routes: `/`, `/health`, `/stats`, `/whoami`."""

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


class WhoAmIHandler(BaseHandler):
    def get(self) -> None:
        self.write_json({"name": self.user.name, "admin": self.user.admin})


ROUTES = [
    (r"/", RootHandler),
    (r"/health", HealthHandler),
    (r"/stats", StatsHandler),
    (r"/whoami", WhoAmIHandler),
]

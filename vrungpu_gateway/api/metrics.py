"""`GET /metrics`: the Prometheus exposition, token-protected unless --metrics-public."""

from __future__ import annotations

from vrungpu_gateway.api.base import BaseHandler


class MetricsHandler(BaseHandler):
    def prepare(self) -> None:
        if not self.gateway.config.metrics_public:
            super().prepare()

    def compute_etag(self) -> None:
        return None  # a scrape is never the same twice: no hashing of the body

    async def get(self) -> None:
        body, content_type = await self.gateway.metrics.scrape(
            accept=self.request.headers.get("Accept")
        )
        self.set_header("Content-Type", content_type)
        self.finish(body)


ROUTES = [
    (r"/metrics", MetricsHandler),
]

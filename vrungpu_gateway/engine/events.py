"""In-process publish/subscribe for task updates and output lines.

Subscribers are plain callables run on the event loop; each must return at once (the
WebSocket layer puts events on its own bounded per-client queue). A failing subscriber is
logged and never breaks the publisher.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Event = dict[str, Any]
Subscriber = Callable[[Event], None]


Backlog = Callable[[], list[asyncio.Event]]  # consumers behind now: each event set at room


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._backlogs: list[Backlog] = []

    def add_backlog(self, backlog: Backlog) -> None:
        """Register a consumer side that can fall behind (the WebSocket hub)."""
        self._backlogs.append(backlog)

    async def room(self, *, timeout_s: float) -> None:
        """Wait, at most ``timeout_s``, until consumers that fell behind have room again.

        A producer whose output is safe elsewhere (a job's log file) paces itself by this, as
        a pipe would pace a job: a client that keeps up is not handed more than it can take
        at once, and one that stopped reading costs at most ``timeout_s`` before it is given
        a gap and no longer waited for.
        """
        waits = [asyncio.ensure_future(e.wait()) for b in self._backlogs for e in b()]
        if not waits:
            return
        _, pending = await asyncio.wait(waits, timeout=timeout_s)
        for waiter in pending:
            waiter.cancel()

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Add ``subscriber``; the returned function removes it."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def publish(self, event: Event) -> None:
        for subscriber in tuple(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                log.exception("event subscriber failed on %s", event.get("type"))

"""Rate limiting on the event loop: call a function at most once per interval, trailing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Throttle:
    """``poke()`` asks for a call; calls come at most every ``interval_s``, the last one late."""

    def __init__(self, interval_s: float, fn: Callable[[], None]) -> None:
        self._interval_s = interval_s
        self._fn = fn
        self._last = float("-inf")
        self._handle: asyncio.TimerHandle | None = None

    def poke(self) -> None:
        if self._handle is not None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, self._last + self._interval_s - loop.time())
        self._handle = loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._last = asyncio.get_running_loop().time()
        self._fn()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

"""engine/throttle.py in process, on an event loop whose clock the test moves by hand."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from vrungpu_gateway.engine.throttle import Throttle


class ManualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``time()`` only moves when the test says so."""

    now = 1000.0

    def time(self) -> float:
        return self.now


@pytest.fixture
def loop() -> Iterator[ManualClockLoop]:
    loop = ManualClockLoop()
    yield loop
    loop.close()


def settle(loop: ManualClockLoop) -> None:
    """Run what is due at the loop's current (frozen) time."""
    for _ in range(3):
        loop.run_until_complete(asyncio.sleep(0))


def test_first_poke_calls_at_once_then_at_most_once_per_interval(loop: ManualClockLoop) -> None:
    calls: list[float] = []
    throttle = Throttle(0.2, lambda: calls.append(loop.time()))

    async def poke(times: int) -> None:
        for _ in range(times):
            throttle.poke()

    loop.run_until_complete(poke(1000))
    settle(loop)
    assert calls == [1000.0]  # a thousand pokes: one call
    loop.run_until_complete(poke(1000))
    settle(loop)
    loop.now += 0.1
    settle(loop)
    assert calls == [1000.0]  # within the interval: nothing yet
    loop.now += 0.1
    settle(loop)
    assert calls == [1000.0, 1000.2]  # the trailing call, once the interval has passed
    loop.now += 5
    settle(loop)
    assert len(calls) == 2  # no poke, no call


def test_a_poke_after_a_quiet_interval_calls_at_once(loop: ManualClockLoop) -> None:
    calls: list[float] = []
    throttle = Throttle(1.0, lambda: calls.append(loop.time()))

    async def poke() -> None:
        throttle.poke()

    loop.run_until_complete(poke())
    settle(loop)
    loop.now += 3
    loop.run_until_complete(poke())
    settle(loop)
    assert calls == [1000.0, 1003.0]


def test_cancel_drops_the_pending_call(loop: ManualClockLoop) -> None:
    calls: list[float] = []
    throttle = Throttle(1.0, lambda: calls.append(loop.time()))

    async def poke() -> None:
        throttle.poke()

    loop.run_until_complete(poke())
    settle(loop)
    loop.run_until_complete(poke())
    throttle.cancel()
    loop.now += 2
    settle(loop)
    assert calls == [1000.0]
    loop.run_until_complete(poke())  # a cancelled throttle can be poked again
    settle(loop)
    assert calls == [1000.0, 1002.0]

"""Prespawned kernels (``--prespawn-kernels K``): K started kernels that hold no slot yet.

A spare is a kernel process started like any other (forked from the warm zygote, so the
``--preload`` modules are imported) but with no GPU visible (``CUDA_VISIBLE_DEVICES`` empty)
and nothing touching CUDA. A new kernel request takes one (``take``), its slot is granted, and
the kernel manager claims it (sets ``CUDA_VISIBLE_DEVICES`` in the kernel before any CUDA use);
a replacement starts in the background. A spare that dies is replaced.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from vrungpu_gateway.engine.kernels.kernel import Kernel

log = logging.getLogger(__name__)

RETRY_FIRST_S = 2.0
RETRY_MAX_S = 60.0


class SparePool:
    def __init__(
        self,
        *,
        size: int,
        make: Callable[[], Awaitable[Kernel]],
        discard: Callable[[Kernel], Awaitable[None]],
    ) -> None:
        self.size = size
        self._make = make
        self._discard = discard
        self._ready: list[Kernel] = []
        self._filling: asyncio.Task[None] | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._ready)

    def take(self) -> Kernel | None:
        """A ready spare, or None; a replacement starts either way."""
        kernel = self._ready.pop(0) if self._ready else None
        self.refill()
        return kernel

    def give_back(self, kernel: Kernel) -> None:
        """A spare taken but not claimed (its request failed) goes back first in line."""
        if self._closed:
            asyncio.ensure_future(self._discard(kernel))
            return
        self._ready.insert(0, kernel)

    def lost(self, kernel: Kernel) -> None:
        """A spare's process ended: forget it, start another."""
        if kernel in self._ready:
            self._ready.remove(kernel)
            log.warning("spare kernel %s ended; starting another", kernel.id)
        self.refill()

    def refill(self) -> None:
        if self.size > 0 and not self._closed and (self._filling is None or self._filling.done()):
            self._filling = asyncio.create_task(self._fill())

    async def _fill(self) -> None:
        delay = RETRY_FIRST_S
        while not self._closed and len(self._ready) < self.size:
            try:
                kernel = await self._make()
            except Exception as exc:  # e.g. ipykernel missing: say so, retry slowly
                log.error("could not prespawn a kernel (retry in %g s): %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            if self._closed:
                await self._discard(kernel)
                return
            self._ready.append(kernel)
            log.info("spare kernel %s ready (%d/%d)", kernel.id, len(self._ready), self.size)

    async def close(self) -> None:
        self._closed = True
        if self._filling is not None:
            self._filling.cancel()
            await asyncio.gather(self._filling, return_exceptions=True)
        spares, self._ready = self._ready, []
        await asyncio.gather(*(self._discard(k) for k in spares), return_exceptions=True)

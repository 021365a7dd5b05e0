"""One live kernel in the gateway's memory, its clients, and its one presenter (``model``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from vrungpu_gateway.engine.kernels.wire import (
    BadMessage,
    Bridge,
    KernelWire,
    Message,
    Send,
    from_client,
    to_client,
)
from vrungpu_gateway.engine.runner import DetachedHandle, JobExit
from vrungpu_gateway.records import KernelRecord, iso, utcnow

log = logging.getLogger(__name__)


class Phase(StrEnum):
    STARTING = "starting"  # waiting for its slot or its process
    ALIVE = "alive"
    RESTARTING = "restarting"
    STOPPING = "stopping"


class ClientLink:
    """One WebSocket client of a kernel: its messages go to the kernel, the kernel's to it."""

    def __init__(self, *, kernel_id: str, wire: KernelWire, send: Send, end: Callable[[], None]):
        self.kernel_id = kernel_id
        self.end = end  # closes the client's WebSocket (the kernel went away)
        self._send = send
        self._bridge: Bridge | None = wire.open(send, self._reply)
        self.dropped = 0

    def _reply(self, channel: str, msg: Message) -> None:
        self._send(to_client(channel, msg))

    async def receive(self, raw: str | bytes) -> None:
        """Forward one client message; a malformed one is logged and dropped."""
        try:
            channel, msg = from_client(raw)
        except BadMessage as exc:
            self.dropped += 1
            log.warning("kernel %s: client message dropped: %s", self.kernel_id, exc)
            return
        if self._bridge is not None:
            await self._bridge.send(channel, msg)

    async def close(self) -> None:
        bridge, self._bridge = self._bridge, None
        if bridge is not None:
            await bridge.close()


@dataclass(eq=False)
class Kernel:
    record: KernelRecord
    phase: Phase = Phase.STARTING
    wire: KernelWire | None = None
    handle: DetachedHandle | None = None
    follower: asyncio.Task[JobExit] | None = None  # the only caller of handle.wait()
    holds_slot: bool = False
    links: set[ClientLink] = field(default_factory=set)
    ready: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def id(self) -> str:
        return self.record.kernel_id

    @property
    def execution_state(self) -> str:
        if self.phase in (Phase.STARTING, Phase.RESTARTING) or self.wire is None:
            return self.phase.value
        return self.wire.execution_state

    @property
    def last_activity(self) -> Any:
        return self.wire.last_activity if self.wire is not None else self.record.last_activity

    def idle_s(self) -> float:
        return max(0.0, (utcnow() - self.last_activity).total_seconds())

    def holder(self) -> dict[str, Any]:
        """How ``/gpu`` and ``/ws`` name this kernel as the holder of its GPUs."""
        return {
            "kind": "kernel",
            "id": self.id,
            "session": self.record.session,
            "name": self.record.spec_name,
            "owner": self.record.owner,
        }

    def model(self, *, queue_position: int | None = None) -> dict[str, Any]:
        """The kernel as ``/api/kernels`` shows it: Jupyter's model plus our fields."""
        record = self.record
        return {
            "id": self.id,
            "name": record.spec_name,
            "last_activity": iso(self.last_activity),
            "execution_state": self.execution_state,
            "connections": len(self.links),
            "session": record.session,
            "gpus": list(record.gpu_ids),
            "device": record.device,
            "created_at": iso(record.created_at),
            "idle_s": round(self.idle_s(), 1),
            "queue_position": queue_position,
            "owner": record.owner,
        }

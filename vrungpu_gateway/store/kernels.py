"""The kernel record and its repository: remote kernels kept across gateway restarts.

``KernelRecord`` is the stored shape of a kernel (the engine's ``Kernel`` adds what lives only
in memory); ``KernelRepo`` is the repository object the kernel manager is given. Its methods
are async: each runs on the database thread (``Database.run``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import select

from vrungpu_gateway.store.db import Database
from vrungpu_gateway.store.models import KernelRow


class KernelState(StrEnum):
    SPARE = "spare"  # prespawned, not handed to anyone yet
    ALIVE = "alive"
    DEAD = "dead"


@dataclass
class KernelRecord:
    kernel_id: str
    spec_name: str
    connection_file: str
    created_at: datetime
    last_activity: datetime
    device: str = "cpu"
    gpu_ids: list[int] = field(default_factory=list)
    session: str | None = None
    state: KernelState = KernelState.ALIVE
    env: dict[str, str] = field(default_factory=dict)
    ended_at: datetime | None = None
    end_reason: str | None = None
    owner: str | None = None  # the user who started it (None: from before users: the admin's)

    def copy(self) -> KernelRecord:
        return replace(self, gpu_ids=list(self.gpu_ids), env=dict(self.env))


_COLUMNS = [f.name for f in fields(KernelRecord)]


def _to_record(row: KernelRow) -> KernelRecord:
    values: dict[str, Any] = {name: getattr(row, name) for name in _COLUMNS}
    values["state"] = KernelState(values["state"])
    values["gpu_ids"] = list(values["gpu_ids"] or [])
    values["env"] = dict(values["env"] or {})
    return KernelRecord(**values)


class KernelRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def save(self, record: KernelRecord) -> None:
        """Insert or update (pass a copy: it is written later, on the database thread)."""
        await self.db.run(self._save, record)

    def _save(self, record: KernelRecord) -> None:
        values = {name: getattr(record, name) for name in _COLUMNS}
        values["state"] = record.state.value
        with self.db.session() as session:
            session.merge(KernelRow(**values))

    async def with_state(self, *states: KernelState) -> list[KernelRecord]:
        return await self.db.run(self._with_state, [s.value for s in states])

    def _with_state(self, states: list[str]) -> list[KernelRecord]:
        with self.db.session() as session:
            rows = session.scalars(
                select(KernelRow).where(KernelRow.state.in_(states)).order_by(KernelRow.created_at)
            )
            return [_to_record(row) for row in rows]

    async def get(self, kernel_id: str) -> KernelRecord | None:
        return await self.db.run(self._get, kernel_id)

    def _get(self, kernel_id: str) -> KernelRecord | None:
        with self.db.session() as session:
            row = session.get(KernelRow, kernel_id)
            return _to_record(row) if row is not None else None

"""The kernel repository: remote kernels kept across gateway restarts.

``KernelRepo`` is the repository object the kernel manager is given (the record itself is
``records.KernelRecord``). Its methods are async: each runs on the database thread
(``Database.run``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from vrungpu_gateway.records import KernelRecord, KernelState
from vrungpu_gateway.store.db import Database
from vrungpu_gateway.store.models import KernelRow

_COLUMNS = KernelRecord.column_names()


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

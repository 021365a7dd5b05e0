"""The task repository: ``TaskRepo`` reads and writes task records.

Each method queues its call on the database thread at once (calls run in the order made) and
returns the future to await: a write made now lands before any later one.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select

from vrungpu_gateway.protocol import TaskStatus, TaskType
from vrungpu_gateway.records import TaskRecord, utcnow
from vrungpu_gateway.store.db import Database
from vrungpu_gateway.store.models import TaskRow


def _to_record(row: TaskRow) -> TaskRecord:
    values = {name: getattr(row, name) for name in TaskRecord.column_names()}
    values["status"] = TaskStatus(values["status"])
    values["task_type"] = TaskType(values["task_type"])
    values["gpu_ids"] = list(values["gpu_ids"] or [])
    values["args"] = list(values["args"] or [])
    values["env"] = dict(values["env"] or {})
    return TaskRecord(**values)


def _columns(record: TaskRecord) -> dict[str, Any]:
    values = asdict(record)
    values["status"] = record.status.value
    values["task_type"] = record.task_type.value
    return values


class TaskRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    def save_task(self, record: TaskRecord) -> asyncio.Future[None]:
        """Insert or update the whole row (pass a copy of a record the loop keeps changing)."""
        return self.db.submit(self._save_task, record)

    def _save_task(self, record: TaskRecord) -> None:
        with self.db.session() as session:
            session.merge(TaskRow(**_columns(record)))

    def get_task(self, task_id: str) -> asyncio.Future[TaskRecord | None]:
        return self.db.submit(self._get_task, task_id)

    def _get_task(self, task_id: str) -> TaskRecord | None:
        with self.db.session() as session:
            row = session.get(TaskRow, task_id)
            return _to_record(row) if row is not None else None

    def list_tasks(
        self,
        *,
        status: str | None = None,
        task_type: str | None = None,
        device: str | None = None,
        limit: int = 50,
        offset: int = 0,
        owner: str | None = None,
    ) -> asyncio.Future[tuple[list[TaskRecord], int]]:
        """Newest first, filtered (``owner``: that user's only); also the total that matches."""
        query = select(TaskRow)
        for column, value in (
            (TaskRow.status, status),
            (TaskRow.task_type, task_type),
            (TaskRow.device, device),
            (TaskRow.owner, owner),
        ):
            if value is not None:
                query = query.where(column == value)
        return self.db.submit(self._list_tasks, query, limit, offset)

    def _list_tasks(self, query: Any, limit: int, offset: int) -> tuple[list[TaskRecord], int]:
        with self.db.session() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = session.scalars(
                query.order_by(TaskRow.created_at.desc()).limit(limit).offset(offset)
            ).all()
            return [_to_record(r) for r in rows], total

    def tasks_with_status(self, statuses: list[TaskStatus]) -> asyncio.Future[list[TaskRecord]]:
        """Oldest first."""
        return self.db.submit(self._tasks_with_status, [s.value for s in statuses])

    def _tasks_with_status(self, statuses: list[str]) -> list[TaskRecord]:
        with self.db.session() as session:
            rows = session.scalars(
                select(TaskRow).where(TaskRow.status.in_(statuses)).order_by(TaskRow.created_at)
            ).all()
            return [_to_record(r) for r in rows]

    def delete_task(self, task_id: str) -> asyncio.Future[None]:
        return self.db.submit(self._delete_task, task_id)

    def _delete_task(self, task_id: str) -> None:
        with self.db.session() as session:
            session.execute(delete(TaskRow).where(TaskRow.task_id == task_id))

    def count_tasks(self) -> asyncio.Future[int]:
        return self.db.submit(self._count_tasks)

    def _count_tasks(self) -> int:
        with self.db.session() as session:
            return session.scalar(select(func.count()).select_from(TaskRow)) or 0

    def count_by_status(self) -> asyncio.Future[dict[str, int]]:
        """Stored tasks by status (one grouped count: cheap enough for every metrics scrape)."""
        return self.db.submit(self._count_by_status)

    def _count_by_status(self) -> dict[str, int]:
        with self.db.session() as session:
            rows = session.execute(select(TaskRow.status, func.count()).group_by(TaskRow.status))
            return {str(status): int(count) for status, count in rows.all()}

    def task_stats(self) -> asyncio.Future[dict[str, Any]]:
        """Counts by status, mean duration by type, tasks of the last 24 h, uses of each GPU."""
        return self.db.submit(self._task_stats)

    def _task_stats(self) -> dict[str, Any]:
        with self.db.session() as session:
            by_status = dict(
                session.execute(select(TaskRow.status, func.count()).group_by(TaskRow.status)).all()
            )
            finished = session.execute(
                select(TaskRow.task_type, TaskRow.started_at, TaskRow.completed_at).where(
                    TaskRow.started_at.is_not(None), TaskRow.completed_at.is_not(None)
                )
            ).all()
            since = utcnow() - timedelta(hours=24)
            last_24h = (
                session.scalar(
                    select(func.count()).select_from(TaskRow).where(TaskRow.created_at >= since)
                )
                or 0
            )
            usage: dict[str, int] = {}
            for (gpu_ids,) in session.execute(select(TaskRow.gpu_ids)).all():
                for index in gpu_ids or []:
                    usage[str(index)] = usage.get(str(index), 0) + 1
        durations: dict[str, list[float]] = {}
        for task_type, started, completed in finished:
            if started is not None and completed is not None:  # guaranteed by the query
                durations.setdefault(task_type, []).append((completed - started).total_seconds())
        avg = {k: round(sum(v) / len(v), 3) for k, v in durations.items()}
        return {
            "by_status": by_status,
            "avg_duration": avg,
            "last_24h": last_24h,
            "usage_count": usage,
        }

"""Repository functions for tasks. Blocking: call them through ``Database.run``."""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select

from vrungpu_gateway.engine.task import TaskRecord, utcnow
from vrungpu_gateway.protocol import TaskStatus, TaskType
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


def save_task(db: Database, record: TaskRecord) -> None:
    """Insert or update the whole row."""
    with db.session() as session:
        session.merge(TaskRow(**_columns(record)))


def get_task(db: Database, task_id: str) -> TaskRecord | None:
    with db.session() as session:
        row = session.get(TaskRow, task_id)
        return _to_record(row) if row is not None else None


def list_tasks(
    db: Database,
    *,
    status: str | None = None,
    task_type: str | None = None,
    device: str | None = None,
    limit: int = 50,
    offset: int = 0,
    owner: str | None = None,
) -> tuple[list[TaskRecord], int]:
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
    with db.session() as session:
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = session.scalars(
            query.order_by(TaskRow.created_at.desc()).limit(limit).offset(offset)
        ).all()
        return [_to_record(r) for r in rows], total


def tasks_with_status(db: Database, statuses: list[TaskStatus]) -> list[TaskRecord]:
    with db.session() as session:
        rows = session.scalars(
            select(TaskRow)
            .where(TaskRow.status.in_([s.value for s in statuses]))
            .order_by(TaskRow.created_at)
        ).all()
        return [_to_record(r) for r in rows]


def delete_task(db: Database, task_id: str) -> None:
    with db.session() as session:
        session.execute(delete(TaskRow).where(TaskRow.task_id == task_id))


def count_tasks(db: Database) -> int:
    with db.session() as session:
        return session.scalar(select(func.count()).select_from(TaskRow)) or 0


def count_by_status(db: Database) -> dict[str, int]:
    """Stored tasks by status (one grouped count: cheap enough for every metrics scrape)."""
    with db.session() as session:
        rows = session.execute(select(TaskRow.status, func.count()).group_by(TaskRow.status))
        return {str(status): int(count) for status, count in rows.all()}


def task_stats(db: Database) -> dict[str, Any]:
    """Counts by status, mean duration by type, tasks of the last 24 h, uses of each GPU."""
    with db.session() as session:
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
    return {"by_status": by_status, "avg_duration": avg, "last_24h": last_24h, "usage_count": usage}

"""The task record: what the engine knows of one job, and its JSON shape on the wire."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

from vrungpu_gateway.protocol import TaskStatus, TaskType


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass
class TaskRecord:
    task_id: str
    status: TaskStatus
    task_type: TaskType
    device: str  # "gpu" or "cpu", resolved at submit time
    timeout: float
    entry_point: str
    name: str | None = None
    gpus: int = 0
    gpu_id: int | None = None  # asked for while waiting; the first assigned GPU once running
    gpu_ids: list[int] = field(default_factory=list)
    priority: int = 0
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    created_at: datetime = field(default_factory=utcnow)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    return_code: int | None = None
    error: str | None = None
    failure_reason: str | None = None
    progress: float = 0.0
    progress_message: str | None = None
    model_id: str | None = None
    save_model: bool = False
    model_name: str | None = None
    result: Any = None
    pid: int | None = None  # the job's shim (engine/shim.py)
    stdout_log_truncated: bool = False  # the log reached --max-log-mb; later output dropped
    stderr_log_truncated: bool = False
    owner: str | None = None  # the user who submitted it (None: from before users: the admin's)

    @classmethod
    def column_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def copy(self) -> TaskRecord:
        """A snapshot another thread may read while the loop keeps changing this one."""
        return replace(self, gpu_ids=list(self.gpu_ids), args=list(self.args), env=dict(self.env))

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.completed_at or utcnow()
        return round((end - self.started_at).total_seconds(), 3)

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

    def summary(self) -> dict[str, Any]:
        """The task's JSON without output (list items, WS updates)."""
        return {
            "task_id": self.task_id,
            "name": self.name,
            "status": self.status.value,
            "task_type": self.task_type.value,
            "device": self.device,
            "gpu_id": self.gpu_id,
            "gpu_ids": list(self.gpu_ids),
            "gpus": self.gpus,
            "priority": self.priority,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "completed_at": iso(self.completed_at),
            "duration": self.duration,
            "return_code": self.return_code,
            "error": self.error,
            "failure_reason": self.failure_reason,
            "progress": self.progress,
            "progress_message": self.progress_message,
            "stdout_log_truncated": self.stdout_log_truncated,
            "stderr_log_truncated": self.stderr_log_truncated,
            "entry_point": self.entry_point,
            "timeout": self.timeout,
            "args": list(self.args),
            "model_id": self.model_id,
            "model_name": self.model_name,
            "save_model": self.save_model,
            "result": self.result,
        }

"""The domain records below both the engine and the store: a task, a registered model and a
remote kernel as they are kept, with the small enums, ids and times they need.

The engine changes these records; the store's repositories write and read them. Neither
layer owns them, so neither imports the other for them. The task-status set stays in
``protocol`` (the wire vocabulary the notebook side shares).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from vrungpu_gateway.protocol import TaskStatus, TaskType


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# -- tasks --------------------------------------------------------------------------------------
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


# -- registered models --------------------------------------------------------------------------
class ModelStatus(StrEnum):
    READY = "ready"  # served by inference
    ARCHIVED = "archived"  # kept and downloadable, not served


class ArtifactKind(StrEnum):
    FILE = "file"  # one file (model.pt, model.onnx, ...), maybe with companion files beside it
    FOLDER = "folder"  # a whole folder (downloaded as a zip)


CUSTOM_HANDLER = "handler.py"
BUILTIN_HANDLER = "builtin"


def new_model_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass
class ModelRecord:
    model_id: str
    name: str
    kind: ArtifactKind
    file_name: str  # the artifact's basename (a folder's name for folders)
    file_size: int  # bytes of what `GET /model/{id}/download` returns
    sha256: str  # of that same download
    files: list[str]  # every stored file, relative to the model folder
    handler: str  # CUSTOM_HANDLER when the folder holds handler.py, else BUILTIN_HANDLER
    version: int = 0  # assigned by the store: one more than the highest of this name
    status: ModelStatus = ModelStatus.READY
    model_type: str | None = None
    framework: str | None = None
    task_id: str | None = None  # lineage: the task whose workspace produced it
    metrics: dict[str, Any] | None = None
    description: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    owner: str | None = None  # the user who registered it (None: from before users: the admin's)

    @classmethod
    def column_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


# -- remote kernels -----------------------------------------------------------------------------
class KernelState(StrEnum):
    SPARE = "spare"  # prespawned, not handed to anyone yet
    ALIVE = "alive"
    DEAD = "dead"


@dataclass
class KernelRecord:
    """The stored shape of a kernel (the engine's ``Kernel`` adds what lives only in memory)."""

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

    @classmethod
    def column_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def copy(self) -> KernelRecord:
        return replace(self, gpu_ids=list(self.gpu_ids), env=dict(self.env))

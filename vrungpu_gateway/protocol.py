"""Wire vocabulary shared by gateway, client and widgets: task statuses and failure reasons.

This module imports nothing heavy so the notebook side can use it without the gateway's
dependencies loaded.
"""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    def is_live(self) -> bool:
        return not self.is_terminal()


TERMINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


class FailureReason(StrEnum):
    TIMEOUT = "timeout"
    EXIT_CODE = "exit_code"
    CANCELLED = "cancelled"
    LOST = "lost"
    SPAWN_ERROR = "spawn_error"


class TaskType(StrEnum):
    TRAINING = "training"
    INFERENCE = "inference"


class Device(StrEnum):
    AUTO = "auto"
    GPU = "gpu"
    CPU = "cpu"


STREAMS = ("stdout", "stderr")

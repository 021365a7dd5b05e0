"""One function per record that presents it on the wire (shapes in ``vrungpu_gateway.wire``).

Every JSON body and event that carries a task or a model is built here, and nowhere else.
"""

from __future__ import annotations

from typing import cast

from vrungpu_gateway import wire
from vrungpu_gateway.records import ModelRecord, TaskRecord, iso


def task_json(record: TaskRecord, *, queue_position: int | None) -> wire.Task:
    """A task without its output: list items, ``task_update`` events."""
    return cast(
        wire.Task,
        {
            "task_id": record.task_id,
            "name": record.name,
            "status": record.status.value,
            "task_type": record.task_type.value,
            "device": record.device,
            "gpu_id": record.gpu_id,
            "gpu_ids": list(record.gpu_ids),
            "gpus": record.gpus,
            "priority": record.priority,
            "created_at": iso(record.created_at),
            "started_at": iso(record.started_at),
            "completed_at": iso(record.completed_at),
            "duration": record.duration,
            "return_code": record.return_code,
            "error": record.error,
            "failure_reason": record.failure_reason,
            "progress": record.progress,
            "progress_message": record.progress_message,
            "stdout_log_truncated": record.stdout_log_truncated,
            "stderr_log_truncated": record.stderr_log_truncated,
            "entry_point": record.entry_point,
            "timeout": record.timeout,
            "args": list(record.args),
            "model_id": record.model_id,
            "model_name": record.model_name,
            "save_model": record.save_model,
            "result": record.result,
            "queue_position": queue_position,
            "owner": record.owner,
        },
    )


def model_json(record: ModelRecord, *, warm: bool) -> wire.Model:
    """A registered model, the seed's fields first."""
    return cast(
        wire.Model,
        {
            "model_id": record.model_id,
            "name": record.name,
            "version": record.version,
            "model_type": record.model_type,
            "framework": record.framework,
            "status": record.status.value,
            "file_size": record.file_size,
            "created_at": iso(record.created_at),
            "file_name": record.file_name,
            "kind": record.kind.value,
            "sha256": record.sha256,
            "handler": record.handler,
            "files": list(record.files),
            "task_id": record.task_id,
            "metrics": record.metrics,
            "description": record.description,
            "download_url": f"/model/{record.model_id}/download",
            "warm": warm,
            "owner": record.owner,
        },
    )

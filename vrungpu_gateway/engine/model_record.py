"""The registered-model record: what the registry knows of one model, and its JSON shape."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from typing import Any

from vrungpu_gateway.engine.task import utcnow


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

"""The model registry: register, list, update, delete and download models; start inference.

A model lives in ``data/models/{model_id}/`` (see ``model_files``) and in one row (see
``store/registry``). Each registration gets the next ``version`` of its ``name`` among
its owner's models (alice's and bob's "resnet" are both v1 first), a
``sha256`` of its download, and its lineage (``task_id``) when it came from a task. A model
is registered from an upload, from a path inside a finished task's workspace, or by the
``save_model`` completion hook of a run request. Inference is a task of type ``inference``
served by the warm worker pool (``engine/workers``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vrungpu_gateway import wire
from vrungpu_gateway.engine.archive import ZipLimits
from vrungpu_gateway.engine.events import EventBus
from vrungpu_gateway.engine.layout import DataLayout
from vrungpu_gateway.engine.manager import TaskManager, TaskSpec
from vrungpu_gateway.engine.model_files import (
    StoredArtifact,
    find_artifact,
    guess_framework,
    read_metrics,
    remove_tree,
    stage_from_workspace,
    stage_upload,
    write_folder_zip,
)
from vrungpu_gateway.engine.paths import resolve_inside
from vrungpu_gateway.engine.present import model_json
from vrungpu_gateway.engine.repos import ModelStore
from vrungpu_gateway.engine.users import ADMIN_NAME, User
from vrungpu_gateway.engine.worker_process import write_input
from vrungpu_gateway.engine.workers import WorkerPool
from vrungpu_gateway.errors import Conflict, InvalidRequest, NotFound
from vrungpu_gateway.protocol import TaskType
from vrungpu_gateway.records import ArtifactKind, ModelRecord, ModelStatus, TaskRecord, new_model_id

log = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"
Stage = Callable[[Path], StoredArtifact]


@dataclass(frozen=True)
class ModelMeta:
    """What the caller says about a model (all optional)."""

    model_type: str | None = None
    framework: str | None = None
    description: str | None = None
    metrics: dict[str, Any] | None = None


@dataclass(frozen=True)
class Download:
    path: Path
    filename: str
    temporary: bool  # a zip built for this download: remove it once sent


class ModelRegistry:
    def __init__(
        self,
        *,
        repo: ModelStore,
        layout: DataLayout,
        tasks: TaskManager,
        pool: WorkerPool,
        bus: EventBus,
        zip_limits: ZipLimits,
    ) -> None:
        self.repo = repo
        self.layout = layout
        self.tasks = tasks
        self.pool = pool
        self.bus = bus
        self.zip_limits = zip_limits
        tasks.completion_hooks.append(self._save_model)

    # -- registering --------------------------------------------------------------------------
    async def register_upload(
        self,
        *,
        name: str,
        meta: ModelMeta,
        upload: Path,
        filename: str,
        extras: list[tuple[Path, str]],
        unpack: bool = False,
        task_id: str | None = None,
        user: User | None = None,
    ) -> ModelRecord:
        """Store uploaded files (already on disk): the artifact and its companions, owned
        by ``user``."""
        if task_id is not None:
            await self.tasks.get(task_id, user=user)  # lineage must point at a real task
        stage = functools.partial(
            stage_upload,
            upload=upload,
            filename=filename,
            extras=extras,
            unpack=unpack,
            limits=self.zip_limits,
        )
        return await self._store(
            name=name, meta=meta, task_id=task_id, stage=stage, owner=_owner(user)
        )

    async def register_from_task(
        self,
        *,
        name: str,
        meta: ModelMeta,
        task_id: str,
        path: str | None,
        user: User | None = None,
    ) -> ModelRecord:
        """Copy a file or folder of a finished task's workspace (the newest model file when
        ``path`` is None) into the registry, with the task as its lineage."""
        task = await self.tasks.get(task_id, user=user)
        if task.status.is_live():
            raise Conflict(
                f"task {task_id} is {task.status.value}: register its files once it has finished",
                code="task_not_finished",
            )
        source = await asyncio.to_thread(self._source, task_id, path)
        stage = functools.partial(stage_from_workspace, source=source)
        return await self._store(
            name=name, meta=meta, task_id=task_id, stage=stage, owner=_owner(user)
        )

    def _source(self, task_id: str, path: str | None) -> Path:
        workspace = self.layout.workspace(task_id)
        if path is None:
            found = find_artifact(workspace)
            if found is None:
                raise NotFound(
                    f"task {task_id} left no model file (.pt, .pth, .onnx, "
                    "...) in its workspace; give a path",
                    code="file_not_found",
                )
            return found
        source = resolve_inside(workspace, path, what="path")
        if not source.exists():
            raise NotFound(
                f"no file or folder {path!r} in task {task_id}'s workspace", code="file_not_found"
            )
        return source

    async def _store(
        self, *, name: str, meta: ModelMeta, task_id: str | None, stage: Stage, owner: str
    ) -> ModelRecord:
        model_id = new_model_id()
        staging = self.layout.models / f"{STAGING_PREFIX}{model_id}"
        final = self.layout.models / model_id
        try:
            stored = await asyncio.to_thread(stage, staging)
            await asyncio.to_thread(os.rename, staging, final)
        finally:
            await asyncio.to_thread(remove_tree, staging)
        record = ModelRecord(
            model_id=model_id,
            name=name,
            kind=stored.kind,
            file_name=stored.file_name,
            file_size=stored.file_size,
            sha256=stored.sha256,
            files=stored.files,
            handler=stored.handler,
            model_type=meta.model_type,
            framework=meta.framework or guess_framework(stored.file_name),
            task_id=task_id,
            metrics=meta.metrics,
            description=meta.description,
            owner=owner,
        )
        try:
            record = await self.repo.insert_model(record)
        except Exception:
            await asyncio.to_thread(remove_tree, final)
            raise
        log.info(
            "model %s: registered %s v%s (%s, %s bytes)",
            model_id,
            name,
            record.version,
            stored.file_name,
            stored.file_size,
        )
        self.bus.publish({"type": "model_update", "model": self.present(record)})
        return record

    async def _save_model(self, record: TaskRecord) -> None:
        """Completion hook: a run request with ``save_model`` registers what the job left."""
        if record.task_type is not TaskType.TRAINING or not record.save_model:
            return
        workspace = self.layout.workspace(record.task_id)
        source = await asyncio.to_thread(find_artifact, workspace)
        if source is None:
            raise InvalidRequest(
                "save_model: the job left no model file (.pt, .pth, .onnx, "
                ".safetensors, .pkl, ...) in its workspace"
            )
        metrics = await asyncio.to_thread(read_metrics, workspace)
        model = await self._store(
            name=record.model_name or f"task-{record.task_id[:8]}",
            meta=ModelMeta(metrics=metrics, description=f"saved by task {record.task_id}"),
            task_id=record.task_id,
            stage=functools.partial(stage_from_workspace, source=source),
            owner=record.owner or ADMIN_NAME,  # a task from before users: the admin's
        )
        record.model_id = model.model_id

    # -- reading ------------------------------------------------------------------------------
    async def get(self, model_id: str, *, user: User | None = None) -> ModelRecord:
        """The model; NotFound when there is none or ``user`` may not see it (one answer)."""
        record = await self.repo.get_model(model_id)
        if record is None or (user is not None and not user.owns(record.owner)):
            raise NotFound(f"model {model_id} not found", code="model_not_found")
        return record

    def present(self, record: ModelRecord) -> wire.Model:
        """The model's JSON, wherever it is sent (``warm``: a worker has it loaded)."""
        return model_json(record, warm=record.model_id in self.pool.warm_models())

    async def describe(self, model_id: str, *, user: User | None = None) -> wire.Model:
        return self.present(await self.get(model_id, user=user))

    async def list(
        self,
        *,
        name: str | None,
        status: str | None,
        limit: int,
        offset: int,
        user: User | None = None,
    ) -> tuple[list[wire.Model], int]:
        """Newest first; only ``user``'s own unless an admin (None: all)."""
        records, total = await self.repo.list_models(
            name=name,
            status=status,
            limit=limit,
            offset=offset,
            owner=user.scope if user is not None else None,
        )
        return [self.present(r) for r in records], total

    async def download(
        self, *, model_id: str, file: str | None = None, user: User | None = None
    ) -> Download:
        """What `GET /model/{id}/download` sends: the artifact, one named file, or a zip."""
        record = await self.get(model_id, user=user)
        folder = self.layout.models / model_id
        if file is not None:
            target = resolve_inside(folder, file, what="file")
            if not await asyncio.to_thread(target.is_file):
                raise NotFound(f"no file {file!r} in model {model_id}", code="file_not_found")
            return Download(target, target.name, temporary=False)
        if record.kind is ArtifactKind.FILE:
            return Download(folder / record.file_name, record.file_name, temporary=False)
        scratch = self.layout.uploads / f"{uuid.uuid4().hex}.zip"
        await asyncio.to_thread(write_folder_zip, folder, record.file_name, scratch)
        return Download(scratch, f"{record.file_name}.zip", temporary=True)

    # -- changing -----------------------------------------------------------------------------
    async def update(
        self, *, model_id: str, changes: dict[str, Any], user: User | None = None
    ) -> ModelRecord:
        """Set ``status`` (ready|archived), ``description`` or ``metrics``; archiving unloads."""
        await self.get(model_id, user=user)
        if changes.get("status") is ModelStatus.ARCHIVED:
            await self.pool.unload(model_id=model_id, reason="the model was archived")
        record = await self.repo.update_model(model_id, changes)
        if record is None:
            raise NotFound(f"model {model_id} not found", code="model_not_found")
        self.bus.publish({"type": "model_update", "model": self.present(record)})
        return record

    async def delete(self, *, model_id: str, user: User | None = None) -> int:
        """Unload its warm workers, then remove the row and the files; workers unloaded."""
        record = await self.get(model_id, user=user)
        unloaded = await self.pool.unload(
            model_id=model_id, reason="the model was deleted", forever=True
        )
        await self.repo.delete_model(model_id)
        await asyncio.to_thread(remove_tree, self.layout.models / model_id)
        self.bus.publish({"type": "model_deleted", "model_id": model_id, "owner": record.owner})
        log.info("model %s: deleted (%s warm worker(s) unloaded)", model_id, unloaded)
        return unloaded

    async def recover(self) -> None:
        """Remove staging folders a stopped gateway left half-filled."""
        await asyncio.to_thread(_remove_staging, self.layout.models)

    # -- inference ----------------------------------------------------------------------------
    async def infer(
        self, *, model_id: str, input_data: Any, spec: TaskSpec, user: User | None = None
    ) -> TaskRecord:
        """Queue an inference task (owned by ``user``) for a ready model; its input is
        written as a JSON file."""
        model = await self.get(model_id, user=user)
        if model.status is not ModelStatus.READY:
            raise Conflict(
                f"model {model_id} is {model.status.value}; only ready models serve inference",
                code="model_not_ready",
            )
        spec = replace(
            spec,
            task_type=TaskType.INFERENCE,
            model_id=model_id,
            gpus=1,
            save_model=False,
            model_name=model.name,
            name=spec.name or f"inference {model.name} v{model.version}",
        )
        return await self.tasks.submit(
            spec=spec, prepare=functools.partial(write_input, input_data=input_data), user=user
        )


def _owner(user: User | None) -> str:
    """Who a new model belongs to: the admin when no user is given (an in-process caller)."""
    return user.name if user is not None else ADMIN_NAME


def _remove_staging(models: Path) -> None:
    for path in models.glob(f"{STAGING_PREFIX}*"):
        if path.is_dir():
            remove_tree(path)
        else:
            path.unlink(missing_ok=True)

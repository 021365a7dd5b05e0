"""What the engine needs of storage: one repository per table, given at composition.

The store's ``TaskRepo``, ``ModelRepo`` and ``KernelRepo`` implement these; the engine knows
only these shapes, never the store. Task and model calls are queued on the database thread
when made (in call order) and return the future to await.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from vrungpu_gateway.protocol import TaskStatus
from vrungpu_gateway.records import KernelRecord, KernelState, ModelRecord, TaskRecord


class TaskStore(Protocol):
    def save_task(self, record: TaskRecord) -> asyncio.Future[None]: ...

    def get_task(self, task_id: str) -> asyncio.Future[TaskRecord | None]: ...

    def list_tasks(
        self,
        *,
        status: str | None = None,
        task_type: str | None = None,
        device: str | None = None,
        limit: int = 50,
        offset: int = 0,
        owner: str | None = None,
    ) -> asyncio.Future[tuple[list[TaskRecord], int]]: ...

    def tasks_with_status(self, statuses: list[TaskStatus]) -> asyncio.Future[list[TaskRecord]]: ...

    def delete_task(self, task_id: str) -> asyncio.Future[None]: ...

    def count_tasks(self) -> asyncio.Future[int]: ...

    def count_by_status(self) -> asyncio.Future[dict[str, int]]: ...

    def task_stats(self) -> asyncio.Future[dict[str, Any]]: ...


class ModelStore(Protocol):
    def insert_model(self, record: ModelRecord) -> asyncio.Future[ModelRecord]: ...

    def get_model(self, model_id: str) -> asyncio.Future[ModelRecord | None]: ...

    def list_models(
        self,
        *,
        name: str | None = None,
        status: str | None = None,
        limit: int = 100,
        offset: int = 0,
        owner: str | None = None,
    ) -> asyncio.Future[tuple[list[ModelRecord], int]]: ...

    def update_model(
        self, model_id: str, changes: dict[str, Any]
    ) -> asyncio.Future[ModelRecord | None]: ...

    def delete_model(self, model_id: str) -> asyncio.Future[bool]: ...

    def model_stats(self) -> asyncio.Future[dict[str, Any]]: ...


class KernelStore(Protocol):
    async def save(self, record: KernelRecord) -> None: ...

    async def with_state(self, *states: KernelState) -> list[KernelRecord]: ...

    async def get(self, kernel_id: str) -> KernelRecord | None: ...

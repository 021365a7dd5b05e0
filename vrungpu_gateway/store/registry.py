"""The model repository: ``ModelRepo`` reads and writes registered-model records.

Each method queues its call on the database thread at once (calls run in the order made) and
returns the future to await.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import delete, func, select

from vrungpu_gateway.records import ArtifactKind, ModelRecord, ModelStatus
from vrungpu_gateway.store.db import Database
from vrungpu_gateway.store.models import ModelRow


def _to_record(row: ModelRow) -> ModelRecord:
    values = {name: getattr(row, name) for name in ModelRecord.column_names()}
    values["status"] = ModelStatus(values["status"])
    values["kind"] = ArtifactKind(values["kind"])
    values["files"] = list(values["files"] or [])
    values["sha256"] = values["sha256"] or ""
    values["file_name"] = values["file_name"] or ""
    return ModelRecord(**values)


def _columns(record: ModelRecord) -> dict[str, Any]:
    values = {name: getattr(record, name) for name in ModelRecord.column_names()}
    values["status"] = record.status.value
    values["kind"] = record.kind.value
    values["files"] = list(record.files)
    return values


class ModelRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    def insert_model(self, record: ModelRecord) -> asyncio.Future[ModelRecord]:
        """Store a new model; its version becomes one more than the highest of its name among
        its owner's models (names and versions are per owner)."""
        return self.db.submit(self._insert_model, record)

    def _insert_model(self, record: ModelRecord) -> ModelRecord:
        with self.db.session() as session:
            latest = session.scalar(
                select(func.max(ModelRow.version)).where(
                    ModelRow.name == record.name, ModelRow.owner == record.owner
                )
            )
            record.version = (latest or 0) + 1
            session.add(ModelRow(**_columns(record)))
        return record

    def get_model(self, model_id: str) -> asyncio.Future[ModelRecord | None]:
        return self.db.submit(self._get_model, model_id)

    def _get_model(self, model_id: str) -> ModelRecord | None:
        with self.db.session() as session:
            row = session.get(ModelRow, model_id)
            return _to_record(row) if row is not None else None

    def list_models(
        self,
        *,
        name: str | None = None,
        status: str | None = None,
        limit: int = 100,
        offset: int = 0,
        owner: str | None = None,
    ) -> asyncio.Future[tuple[list[ModelRecord], int]]:
        """Newest first (by name, then highest version), filtered (``owner``: that user's
        only); also the matching total."""
        query = select(ModelRow)
        if owner is not None:
            query = query.where(ModelRow.owner == owner)
        if name is not None:
            query = query.where(ModelRow.name == name)
        if status is not None:
            query = query.where(ModelRow.status == status)
        return self.db.submit(self._list_models, query, limit, offset)

    def _list_models(self, query: Any, limit: int, offset: int) -> tuple[list[ModelRecord], int]:
        with self.db.session() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = session.scalars(
                query.order_by(ModelRow.created_at.desc(), ModelRow.version.desc())
                .limit(limit)
                .offset(offset)
            ).all()
            return [_to_record(r) for r in rows], total

    def update_model(
        self, model_id: str, changes: dict[str, Any]
    ) -> asyncio.Future[ModelRecord | None]:
        """Set some columns (status, description, metrics) and return the model, None if gone."""
        return self.db.submit(self._update_model, model_id, changes)

    def _update_model(self, model_id: str, changes: dict[str, Any]) -> ModelRecord | None:
        with self.db.session() as session:
            row = session.get(ModelRow, model_id)
            if row is None:
                return None
            for key, value in changes.items():
                setattr(row, key, value.value if isinstance(value, ModelStatus) else value)
            session.flush()
            return _to_record(row)

    def delete_model(self, model_id: str) -> asyncio.Future[bool]:
        """True when there was such a model."""
        return self.db.submit(self._delete_model, model_id)

    def _delete_model(self, model_id: str) -> bool:
        with self.db.session() as session:
            result = session.execute(delete(ModelRow).where(ModelRow.model_id == model_id))
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def model_stats(self) -> asyncio.Future[dict[str, Any]]:
        return self.db.submit(self._model_stats)

    def _model_stats(self) -> dict[str, Any]:
        with self.db.session() as session:
            by_status = dict(
                session.execute(
                    select(ModelRow.status, func.count()).group_by(ModelRow.status)
                ).all()
            )
        return {"by_status": by_status, "total": sum(by_status.values())}

"""Repository functions for registered models. Blocking: call them through ``Database.run``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from vrungpu_gateway.store.db import Database
from vrungpu_gateway.store.models import ModelRow


def model_stats(db: Database) -> dict[str, Any]:
    with db.session() as session:
        by_status = dict(
            session.execute(select(ModelRow.status, func.count()).group_by(ModelRow.status)).all()
        )
    return {"by_status": by_status, "total": sum(by_status.values())}

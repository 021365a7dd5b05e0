"""Owners (users): the user's name on each task, model and kernel.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from vrungpu_gateway.store.migrations import has_column, has_index

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("tasks", "models", "kernels"):
        if not has_column(table, "owner"):
            op.add_column(table, sa.Column("owner", sa.String(200)))
        if not has_index(table, f"ix_{table}_owner"):
            op.create_index(f"ix_{table}_owner", table, ["owner"])

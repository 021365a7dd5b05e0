"""0.6.0: log truncation flags on tasks; remote kernels.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from vrungpu_gateway.store.migrations import has_column, has_index, has_table

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for column in ("stdout_log_truncated", "stderr_log_truncated"):
        if not has_column("tasks", column):
            op.add_column(
                "tasks",
                sa.Column(column, sa.Boolean(), nullable=False, server_default=sa.false()),
            )
    if not has_table("kernels"):
        _create_kernels()
    for column in ("session", "state"):
        if not has_index("kernels", f"ix_kernels_{column}"):
            op.create_index(f"ix_kernels_{column}", "kernels", [column])


def _create_kernels() -> None:
    op.create_table(
        "kernels",
        sa.Column("kernel_id", sa.String(64), primary_key=True),
        sa.Column("spec_name", sa.String(64), nullable=False),
        sa.Column("session", sa.String(200)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("gpu_ids", sa.JSON(), nullable=False),
        sa.Column("device", sa.String(8), nullable=False),
        sa.Column("connection_file", sa.String(1000), nullable=False),
        sa.Column("env", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_activity", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime()),
        sa.Column("end_reason", sa.Text()),
    )

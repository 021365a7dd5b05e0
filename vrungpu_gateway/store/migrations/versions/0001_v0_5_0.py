"""The schema of v0.5.0: tasks and models.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("task_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("task_type", sa.String(16), nullable=False),
        sa.Column("device", sa.String(8), nullable=False),
        sa.Column("gpus", sa.Integer(), nullable=False),
        sa.Column("gpu_id", sa.Integer()),
        sa.Column("gpu_ids", sa.JSON(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("timeout", sa.Float(), nullable=False),
        sa.Column("entry_point", sa.String(500), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("env", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime()),
        sa.Column("completed_at", sa.DateTime()),
        sa.Column("return_code", sa.Integer()),
        sa.Column("error", sa.Text()),
        sa.Column("failure_reason", sa.String(16)),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("progress_message", sa.Text()),
        sa.Column("model_id", sa.String(64)),
        sa.Column("save_model", sa.Boolean(), nullable=False),
        sa.Column("model_name", sa.String(200)),
        sa.Column("result", sa.JSON()),
        sa.Column("pid", sa.Integer()),
    )
    for column in ("status", "task_type", "created_at", "model_id"):
        op.create_index(f"ix_tasks_{column}", "tasks", [column])
    op.create_table(
        "models",
        sa.Column("model_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("model_type", sa.String(100)),
        sa.Column("framework", sa.String(100)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("file_name", sa.String(500)),
        sa.Column("file_size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64)),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("handler", sa.String(32), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("task_id", sa.String(64)),
        sa.Column("metrics", sa.JSON()),
        sa.Column("description", sa.Text()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("name", "version", name="uq_model_name_version"),
    )
    for column in ("name", "status", "task_id", "created_at"):
        op.create_index(f"ix_models_{column}", "models", [column])

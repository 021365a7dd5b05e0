"""Model names and versions per owner: alice's first "resnet" is v1 whatever bob has.

The unique (name, version) becomes (owner, name, version). Models from before users (no
owner) are the admin's: they are given the owner ``admin``, so that the admin's own
versions go on from theirs and the constraint holds for every row (NULLs never collide).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

OLD = "uq_model_name_version"
NEW = "uq_model_owner_name_version"
ADMIN = "admin"  # engine/users.py ADMIN_NAME, as it was when this revision was written


def upgrade() -> None:
    models = sa.table("models", sa.column("owner", sa.String(200)))
    op.execute(models.update().where(models.c.owner.is_(None)).values(owner=ADMIN))
    unique = {u["name"] for u in sa.inspect(op.get_bind()).get_unique_constraints("models")}
    with op.batch_alter_table("models") as batch:
        if OLD in unique:
            batch.drop_constraint(OLD, type_="unique")
        if NEW not in unique:
            batch.create_unique_constraint(NEW, ["owner", "name", "version"])

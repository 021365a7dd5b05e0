"""Alembic migrations of the store, shipped in the package (see ``store/migrate.py``).

Revision 0001 is the schema of v0.5.0. The later revisions only add what is missing: a
database made by ``create_all`` before migrations existed (stamped 0001, see
``migrate.stamp_legacy``) may already hold some of what they add.
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import inspect


def has_table(name: str) -> bool:
    return inspect(op.get_bind()).has_table(name)


def has_column(table: str, column: str) -> bool:
    return any(c["name"] == column for c in inspect(op.get_bind()).get_columns(table))


def has_index(table: str, name: str) -> bool:
    return any(i["name"] == name for i in inspect(op.get_bind()).get_indexes(table))

"""Persistence: SQLAlchemy tables and repositories over SQLite (WAL, the default) or
PostgreSQL (--db-url), with the Alembic migrations that make and upgrade the schema."""

from vrungpu_gateway.store.db import Database

__all__ = ["Database"]

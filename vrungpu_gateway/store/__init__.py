"""Persistence: SQLAlchemy models and repository functions over SQLite (WAL)."""

from vrungpu_gateway.store.db import Database

__all__ = ["Database"]

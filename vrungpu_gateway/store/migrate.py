"""Schema migrations: the database is brought to this gateway's head revision at start.

The Alembic revisions ship in ``store/migrations/`` and run on a connection handed over in
code (no alembic.ini). A database made by ``create_all`` before migrations existed has no
``alembic_version``: its tables are checked against v0.5.0 and it is stamped 0001, then
upgraded. A database at a revision this code does not know (made by a newer gateway) is
refused, as is one whose ``tasks`` table is not ours.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect

log = logging.getLogger(__name__)
logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)  # our one line says it

MIGRATIONS = Path(__file__).parent / "migrations"
FIRST = "0001"  # the schema of v0.5.0
V050_COLUMNS = {
    "tasks": {"task_id", "status", "task_type", "device", "gpu_ids", "entry_point", "created_at"},
    "models": {"model_id", "name", "version", "status", "files", "created_at"},
}
# What later revisions add (columns by table, indexes), oldest first: a database from before
# migrations is stamped at the newest revision whose additions it holds in full.
LEGACY_ADDITIONS: list[tuple[str, dict[str, set[str]], set[str]]] = [
    (
        "0002",
        {"tasks": {"stdout_log_truncated", "stderr_log_truncated"}, "kernels": {"kernel_id"}},
        {"ix_kernels_session", "ix_kernels_state"},
    ),
    (
        "0003",
        {"tasks": {"owner"}, "models": {"owner"}, "kernels": {"owner"}},
        {"ix_tasks_owner", "ix_models_owner", "ix_kernels_owner"},
    ),
]


class SchemaError(ValueError):
    """The database cannot be brought to this gateway's schema (one line)."""


def _config(conn: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    return config


def head() -> str:
    """The newest revision this code knows."""
    found = ScriptDirectory.from_config(_config()).get_current_head()
    assert found is not None
    return found


def known() -> set[str]:
    return {script.revision for script in ScriptDirectory.from_config(_config()).walk_revisions()}


def current(engine: Engine) -> str | None:
    """The database's revision (None: never migrated, or empty)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Bring the database to the head revision; (revision before, revision now)."""
    with engine.begin() as conn:
        before = MigrationContext.configure(conn).get_current_revision()
        if before is not None and before not in known():
            raise SchemaError(
                f"the database is at schema revision {before}, newer than this gateway knows "
                f"(its newest is {head()}): upgrade vrungpu-gateway or use another database"
            )
        config = _config(conn)
        legacy = legacy_revision(conn) if before is None else None
        if legacy is not None:
            command.stamp(config, legacy)
            log.info("database: made before migrations; stamped %s from its tables", legacy)
        command.upgrade(config, "head")
        after = MigrationContext.configure(conn).get_current_revision()
    if after != before:
        log.info("database: schema upgraded from %s to %s", before or "nothing", after)
    assert after is not None
    return before, after


def legacy_revision(conn: Connection) -> str | None:
    """The revision a database from before migrations is at, judged by its tables (None:
    none of ours); SchemaError when a table of ours is there but is not VrunGPU's."""
    inspector = inspect(conn)
    tables = set(inspector.get_table_names())
    present = [table for table in V050_COLUMNS if table in tables]
    if not present:
        return None
    columns = {table: {c["name"] for c in inspector.get_columns(table)} for table in tables}
    for table, needed in V050_COLUMNS.items():
        if not needed <= columns.get(table, set()):
            missing = sorted(needed - columns.get(table, set()))[0]
            raise SchemaError(
                f"the database has a {present[0]!r} table that is not VrunGPU's "
                f"(no {table}.{missing}): use another database"
            )
    indexes = {i["name"] for table in tables for i in inspector.get_indexes(table)}
    found = FIRST
    for revision, added, added_indexes in LEGACY_ADDITIONS:
        held = all(cols <= columns.get(table, set()) for table, cols in added.items())
        if not held or not added_indexes <= indexes:
            break
        found = revision
    return found

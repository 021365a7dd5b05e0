"""Alembic migrations: revision 0001 is v0.5.0's schema; old databases are stamped and
upgraded with every row kept; a newer database is refused; `vrungpu-gateway db`."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect, text

from tests.support import REPO, TOKEN, Api, GatewayProcess
from vrungpu_gateway.store import migrate
from vrungpu_gateway.store.models import Base

V050_SQL = Path(__file__).with_name("v0_5_0_schema.sql")


def gateway_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vrungpu_gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def refusal(data_dir: Path, *extra: str) -> str:
    """Start a gateway on ``data_dir`` that must refuse: exit code 2, the reason as the last
    line, no traceback."""
    done = gateway_cmd(
        "--data-dir", str(data_dir), "--port", "0", "--gpus", "sim:1", "--token", TOKEN, *extra
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    return done.stderr.strip().splitlines()[-1]


def v050_database(path: Path) -> None:
    """A SQLite database as v0.5.0 left it (its create_all DDL), with ``v050_rows``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.executescript(V050_SQL.read_text())
    v050_rows(create_engine(f"sqlite:///{path}"))


def v050_rows(engine: Engine) -> None:
    """A task of each ending and two versions of a model, in v0.5.0's columns (SQL that
    SQLite and PostgreSQL both take)."""
    endings = [("completed", "0", "NULL"), ("failed", "3", "'exit_code'")]
    endings.append(("cancelled", "NULL", "'cancelled'"))
    with engine.begin() as conn:
        for n, (status, code, reason) in enumerate(endings):
            day = f"2026-01-0{n + 1}"
            conn.execute(
                text(
                    "INSERT INTO tasks (task_id, name, status, task_type, device, gpus, gpu_id, "
                    "gpu_ids, priority, timeout, entry_point, args, env, created_at, started_at, "
                    "completed_at, return_code, failure_reason, progress, save_model, result) "
                    f"VALUES ('old-task-{n}', 'old {n}', '{status}', 'training', 'gpu', 1, 0, "
                    "'[0]', 0, 60.0, 'main.py', '[\"a\"]', '{\"K\": \"v\"}', "
                    f"'{day} 10:00:00', '{day} 10:00:01', '{day} 10:00:05', {code}, {reason}, "
                    "1.0, :no, '{\"x\": 1}')"
                ),
                {"no": False},
            )
        for version in (1, 2):
            conn.execute(
                text(
                    "INSERT INTO models (model_id, name, version, model_type, framework, status, "
                    "file_name, file_size, sha256, kind, handler, files, task_id, metrics, "
                    f"created_at) VALUES ('old-model-{version}', 'digits', {version}, 'cnn', "
                    f"'torch', 'archived', 'model.pt', 10, '{'ab' * 32}', 'file', 'builtin', "
                    "'[\"model.pt\"]', 'old-task-0', '{\"acc\": 0.9}', "
                    f"'2026-01-0{version} 11:00:00')"
                )
            )


def schema(engine: Engine, *tables: str) -> dict[str, object]:
    """Columns (name, type, nullable), indexes and unique constraints of ``tables``."""
    inspector = inspect(engine)
    found: dict[str, object] = {}
    for table in tables:
        columns = [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)]
        indexes = sorted(
            (i["name"], tuple(i["column_names"])) for i in inspector.get_indexes(table)
        )
        unique = sorted(str(u["name"]) for u in inspector.get_unique_constraints(table))
        found[table] = (columns, indexes, unique)
    return found


def drift(engine: Engine) -> list[object]:
    """How the database differs from the code's tables (nothing, when migrations are right)."""
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), Base.metadata)


def rows_are_served(api: Api) -> None:
    """Every row of ``v050_rows`` through the API, and new work stored beside them."""
    listing = api.get("/tasks")
    assert listing.headers["X-Total-Count"] == "3"
    tasks = {t["task_id"]: t for t in listing.json()}
    assert {t["status"] for t in tasks.values()} == {"completed", "failed", "cancelled"}
    done = api.get("/task/old-task-0").json()
    assert done["name"] == "old 0" and done["gpu_ids"] == [0] and done["return_code"] == 0
    assert done["completed_at"].startswith("2026-01-01T10:00:05")
    assert api.get("/task/old-task-1").json()["failure_reason"] == "exit_code"
    models = api.get("/models").json()
    shown = models["models"] if isinstance(models, dict) else models
    assert {m["model_id"] for m in shown} == {"old-model-1", "old-model-2"}
    model = api.get("/model/old-model-2").json()
    assert model["version"] == 2 and model["metrics"] == {"acc": 0.9}
    assert model["task_id"] == "old-task-0"
    # the new columns are there with their defaults, and new work is stored beside the old
    assert done["stdout_log_truncated"] is False
    new = api.post("/run/sync", json={"code": "print('new')"}).json()
    assert new["status"] == "completed"
    assert api.get("/tasks").headers["X-Total-Count"] == "4"


def test_revision_0001_is_the_schema_of_v050(tmp_path: Path) -> None:
    made = create_engine(f"sqlite:///{tmp_path / 'made.db'}")
    with made.begin() as conn:
        command.upgrade(migrate._config(conn), migrate.FIRST)
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as conn:
        conn.executescript(V050_SQL.read_text())
    shapes = [
        schema(made, "tasks", "models"),
        schema(create_engine(f"sqlite:///{old}"), "tasks", "models"),
    ]
    assert shapes[0] == shapes[1]


def test_an_empty_database_upgrades_to_exactly_the_code_tables(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'new.db'}")
    assert migrate.upgrade(engine) == (None, migrate.head())
    assert drift(engine) == []
    assert migrate.upgrade(engine) == (migrate.head(), migrate.head())  # again: nothing to do


def test_a_v050_database_keeps_every_row_through_the_gateway(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    v050_database(data / "vrungpu.db")
    rows_are_served(start_gateway(data_dir=data).api)
    assert drift(create_engine(f"sqlite:///{data / 'vrungpu.db'}")) == []


def pre_migration_database(path: Path, revision: str, *, drop: list[str]) -> Engine:
    """A database as create_all (and the old add-missing-columns stopgap) left it: the tables
    of ``revision`` without ``alembic_version``, less the indexes in ``drop``."""
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        command.upgrade(migrate._config(conn), revision)
        conn.execute(text("DROP TABLE alembic_version"))
        for index in drop:
            conn.execute(text(f"DROP INDEX {index}"))
    return engine


def test_a_database_made_before_migrations_is_stamped_from_its_tables(tmp_path: Path) -> None:
    owners = ["ix_tasks_owner", "ix_models_owner", "ix_kernels_owner"]
    cases = [  # (tables of, indexes missing, stamped at)
        ("0001", [], "0001"),
        ("0002", [], "0002"),
        ("0003", [], "0003"),
        ("0003", owners, "0002"),  # the stopgap added columns without their indexes
        ("0002", ["ix_kernels_state"], "0001"),
    ]
    for n, (made, drop, stamped) in enumerate(cases):
        engine = pre_migration_database(tmp_path / f"old{n}.db", made, drop=drop)
        assert migrate.current(engine) is None
        with engine.connect() as conn:
            assert migrate.legacy_revision(conn) == stamped, (made, drop)
        assert migrate.upgrade(engine) == (None, migrate.head())
        assert drift(engine) == [], (made, drop)
        engine.dispose()


def test_a_foreign_tasks_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data" / "vrungpu.db"
    path.parent.mkdir()
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE tasks (id INTEGER PRIMARY KEY, title TEXT)")
    assert "not VrunGPU's" in refusal(path.parent)


def test_a_database_newer_than_the_gateway_stops_it_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "data" / "vrungpu.db"
    path.parent.mkdir()
    migrate.upgrade(create_engine(f"sqlite:///{path}"))
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    line = refusal(path.parent)
    assert line.startswith("vrungpu-gateway: ") and "revision 9999" in line and "newer" in line


def test_db_command_shows_and_upgrades_the_revision(tmp_path: Path) -> None:
    data = tmp_path / "data"
    v050_database(data / "vrungpu.db")
    head = migrate.head()
    current = gateway_cmd("db", "current", "--data-dir", str(data))
    assert current.returncode == 0 and "no revision" in current.stdout
    upgraded = gateway_cmd("db", "upgrade", "--data-dir", str(data))
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"upgraded from nothing to revision {head}" in upgraded.stdout
    current = gateway_cmd("db", "current", "--db-url", f"sqlite:///{data / 'vrungpu.db'}")
    assert f"revision {head} (the newest)" in current.stdout
    with sqlite3.connect(data / "vrungpu.db") as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone() == (3,)
        owners = conn.execute("SELECT owner FROM models").fetchall()
    assert owners == [("admin",), ("admin",)]  # models from before users are the admin's
    missing = gateway_cmd("db", "current", "--data-dir", str(tmp_path / "none"))
    assert missing.returncode == 2 and "no database" in missing.stderr
    assert not (tmp_path / "none").exists()


def test_migrations_ship_in_the_package() -> None:
    shipped = {p.name for p in migrate.MIGRATIONS.rglob("*.py")}
    assert {"env.py", "0001_v0_5_0.py"} <= shipped
    assert json.dumps(sorted(migrate.known())) == json.dumps(
        [f"{n:04d}" for n in range(1, len(migrate.known()) + 1)]
    )

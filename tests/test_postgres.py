"""The store on PostgreSQL (--db-url): migrations, one gateway per database, storage errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine, text

from tests.pg_support import PostgresServer
from tests.support import GatewayProcess, wait_for
from tests.test_migrations import drift, gateway_cmd, refusal, rows_are_served, v050_rows
from tests.test_store import SQL_WORDS, one_gateway_per_database
from vrungpu_gateway.store import migrate


def test_an_empty_database_upgrades_to_exactly_the_code_tables(postgres: PostgresServer) -> None:
    engine = create_engine(postgres.new_database())
    assert migrate.upgrade(engine) == (None, migrate.head())
    assert drift(engine) == []
    assert migrate.upgrade(engine) == (migrate.head(), migrate.head())
    engine.dispose()


def test_a_v050_database_keeps_every_row(
    postgres: PostgresServer, start_gateway: Callable[..., GatewayProcess]
) -> None:
    url = postgres.new_database()
    engine = create_engine(url)
    with engine.begin() as conn:  # v0.5.0's tables, as a gateway before migrations made them
        command.upgrade(migrate._config(conn), migrate.FIRST)
        conn.execute(text("DROP TABLE alembic_version"))
    v050_rows(engine)
    rows_are_served(start_gateway(extra=["--db-url", url]).api)
    assert drift(engine) == []
    engine.dispose()
    shown = gateway_cmd("db", "current", "--db-url", url)
    assert f"revision {migrate.head()} (the newest)" in shown.stdout, shown.stderr


def test_one_gateway_per_database(
    postgres: PostgresServer, start_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    url = postgres.new_database()  # no password in it: shown as it is
    one_gateway_per_database(start_gateway, tmp_path, url, shown=url)


def test_a_database_that_goes_away_answers_503_and_keeps_no_gpu(
    postgres: PostgresServer, start_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    url = postgres.new_database()
    name = url.rsplit("/", 1)[1]
    api = start_gateway(gpus="sim:1", extra=["--db-url", url]).api
    assert api.post("/run/sync", json={"code": "print(1)"}).json()["status"] == "completed"
    postgres.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
    postgres.execute(
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    )
    for res in (
        api.post("/run/async", json={"code": "print(2)", "gpus": 1}),
        api.get("/tasks"),
    ):
        assert res.status_code == 503, res.text
        body = res.json()
        assert body["code"] == "storage_unavailable" and "\n" not in body["detail"]
        assert not any(word in body["detail"] for word in SQL_WORDS), body["detail"]
    postgres.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
    assert api.get("/gpu/pool").json()["available_gpus"] == [0]
    wait_for(lambda: api.get("/tasks").status_code == 200, 10, what="the database back")
    again = api.post("/run/sync", json={"code": "print(3)", "gpus": 1}).json()
    assert again["status"] == "completed" and again["gpu_ids"] == [0]
    # its lock went with its connections: it is taken again, and a second gateway refused
    wait_for(lambda: api.get("/tasks").ok and locks(postgres, name) == 1, 30, what="relock")
    assert "is in use by another gateway" in refusal(tmp_path / "other", "--db-url", url)


def locks(postgres: PostgresServer, name: str) -> int:
    """Advisory locks held on database ``name``."""
    [(count,)] = postgres.execute(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        f"WHERE l.locktype = 'advisory' AND l.granted AND d.datname = '{name}'"
    )
    return int(count)  # type: ignore[call-overload]


def test_a_gateway_whose_database_was_taken_over_stops_serving_it(
    postgres: PostgresServer, start_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    url = postgres.new_database()
    name = url.rsplit("/", 1)[1]
    first = start_gateway(extra=["--db-url", url])
    postgres.execute(  # a server restart, as the first gateway sees it
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    )
    second = start_gateway(data_dir=tmp_path / "second", extra=["--db-url", url])
    assert second.proc is not None

    def refused() -> dict[str, str] | None:
        res = first.api.get("/tasks")
        return res.json() if res.status_code == 503 else None

    body = wait_for(refused, 30, what="the first gateway to refuse")
    assert body is not None
    assert body["code"] == "storage_unavailable" and "another gateway took" in body["detail"]
    assert f"pid {second.proc.pid}," in body["detail"]
    assert second.api.get("/tasks").status_code == 200


def test_long_and_nul_strings_are_refused_or_kept_not_500(
    postgres: PostgresServer, start_gateway: Callable[..., GatewayProcess]
) -> None:
    """PostgreSQL enforces VARCHAR lengths and refuses NUL in text, where SQLite does not."""
    api = start_gateway(extra=["--db-url", postgres.new_database()]).api
    for fields in ({"name": "n" * 5000}, {"name": "a\x00b"}, {"env": {"K": "v\x00w"}}):
        res = api.post("/run/async", json={"code": "print(1)", **fields})
        assert res.status_code in (202, 400, 413, 422), (fields, res.text)
        if res.status_code == 202:  # kept: then readable and run like any other
            task_id = res.json()["task_id"]
            assert api.wait_status(task_id, "completed")["task_id"] == task_id

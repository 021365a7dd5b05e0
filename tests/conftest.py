"""Fixtures: real gateways (simulated GPUs) on free loopback ports with temp data dirs."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pg_support import PostgresServer, find_binaries
from tests.support import Api, Gate, GatewayProcess

# Modules whose gateways run twice: on SQLite (the default) and on a throwaway PostgreSQL.
BOTH_DATABASES = {"test_api_service", "test_tasks_api"}
SQLITE_ONLY = {"test_bad_run_requests_are_4xx_with_one_line"}  # refused before the store


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Browser tests last: Playwright's sync API keeps an event loop marked as running on the
    main thread for as long as its session fixture lives, and no test after it could run
    one of its own (asyncio.run, pytest-asyncio, nbclient)."""
    items.sort(key=lambda item: "/tests/browser/" in str(item.path))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    both = module in BOTH_DATABASES and metafunc.function.__name__ not in SQLITE_ONLY
    if "db_kind" in metafunc.fixturenames and both:
        metafunc.parametrize("db_kind", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for the whole run (skips, saying why, without one)."""
    bin_dir, why = find_binaries()
    if bin_dir is None:
        pytest.skip(why)
    server = PostgresServer(bin_dir)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def db_kind(request: pytest.FixtureRequest) -> str:
    """The store of the gateways a test starts: sqlite, or postgresql (see BOTH_DATABASES)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def start_gateway(
    tmp_path: Path, db_kind: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., GatewayProcess]]:
    """Start gateways on demand (each with its own data dir unless given); stop them all.
    On PostgreSQL each data dir gets its own database."""
    started: list[GatewayProcess] = []
    databases: dict[Path, str] = {}

    def start(data_dir: Path | None = None, **kwargs: Any) -> GatewayProcess:
        data_dir = data_dir or tmp_path / f"data{len(started)}"
        extra = list(kwargs.pop("extra", None) or [])
        if db_kind == "postgresql" and "--db-url" not in extra:
            if data_dir not in databases:
                databases[data_dir] = request.getfixturevalue("postgres").new_database()
            extra += ["--db-url", databases[data_dir]]
        gw = GatewayProcess(data_dir, extra=extra, **kwargs).start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture(scope="module")
def module_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One gateway for a whole module, whose tests must leave no task running; a module opts
    in by defining ``gateway`` as this fixture (see tests/test_magic.py)."""
    gw = GatewayProcess(tmp_path_factory.mktemp("module-gateway")).start()
    yield gw
    gw.stop()


@pytest.fixture
def gateway(start_gateway: Callable[..., GatewayProcess]) -> GatewayProcess:
    return start_gateway()


@pytest.fixture
def api(gateway: GatewayProcess) -> Api:
    return gateway.api


@pytest.fixture
def make_gate(tmp_path: Path) -> Iterator[Callable[[], Gate]]:
    """New gates (see ``Gate``); every one is opened after the test, so no job waits on."""
    made: list[Gate] = []

    def make() -> Gate:
        made.append(Gate(tmp_path / f"gate{len(made)}"))
        return made[-1]

    yield make
    for gate in made:
        gate.open()


@pytest.fixture
def gate(make_gate: Callable[[], Gate]) -> Gate:
    return make_gate()


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A folder the job user may pass through (pytest's own tmp is 0700 root)."""
    base = Path(tempfile.mkdtemp(prefix="vrungpu-jobuser-"))
    base.chmod(0o711)
    yield base
    shutil.rmtree(base, ignore_errors=True)

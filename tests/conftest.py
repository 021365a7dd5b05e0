"""Fixtures: real gateways (simulated GPUs) on free loopback ports with temp data dirs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Api, Gate, GatewayProcess


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Browser tests last: Playwright's sync API keeps an event loop marked as running on the
    main thread for as long as its session fixture lives, and no test after it could run
    one of its own (asyncio.run, pytest-asyncio, nbclient)."""
    items.sort(key=lambda item: "/tests/browser/" in str(item.path))


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Start gateways on demand (each with its own data dir unless given); stop them all."""
    started: list[GatewayProcess] = []

    def start(data_dir: Path | None = None, **kwargs: Any) -> GatewayProcess:
        gw = GatewayProcess(data_dir or tmp_path / f"data{len(started)}", **kwargs).start()
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

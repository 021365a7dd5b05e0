"""Fuzz every operation of a real gateway's /openapi.json with schemathesis.

One gateway (sim GPUs, one CPU slot, short default and kernel queue timeouts) serves the whole
module; each operation gets a bounded, derandomized set of generated requests carrying the token,
and every response must be a non-5xx that conforms to the documented schema, and every
schema-valid request must be accepted. Jobs and kernels that fuzzed requests start are ended when
the module's gateway stops (``stop(end_jobs=True)``).

Then a smaller set of schema-violating requests per operation: each must answer a non-5xx that
conforms to the document (a 4xx with the error body). Whether such a request is refused is not
asked: the gateway ignores query parameters and JSON fields it does not know, as the seed did.

Two answers are judged by what the document says rather than by schemathesis's defaults:
- a 503 where the operation documents one (a kernel that waited --kernel-queue-timeout for its
  GPUs: the fuzz starts kernels that hold them) is the documented "busy" answer with an error
  body, not a server error; any other 5xx still fails;
- a WebSocket route cannot be opened by an HTTP client, so a plain GET answers the documented
  400 ("not an upgrade"); the acceptance of schema-valid data is not asked of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
)

from tests.support import TOKEN, GatewayProcess

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"token {TOKEN}"}
BUSY = 503


def _documented(case: Any) -> set[str]:
    return set(case.operation.definition.raw.get("responses", {}))


def documented_busy_only(ctx: Any, response: Any, case: Any) -> bool | None:
    """No 5xx but a 503 the operation documents, with the error body ({detail, code})."""
    status = response.status_code
    if status < 500:
        return None
    if status == BUSY and str(BUSY) in _documented(case):
        body = response.json()
        assert isinstance(body, dict) and body.get("detail") and body.get("code"), body
        return None
    raise AssertionError(f"server error {status}: {response.text[:500]}")


def _is_websocket(operation: Any) -> bool:
    return "101" in operation.definition.raw.get("responses", {})


@pytest.fixture(scope="module")
def fuzz_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    data: Path = tmp_path_factory.mktemp("fuzz-gateway")
    extra = ["--cpu-slots", "1", "--default-timeout", "5", "--kernel-queue-timeout", "1"]
    gw = GatewayProcess(data, extra=extra).start()
    yield gw
    gw.stop(end_jobs=True)


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_gateway: GatewayProcess) -> Any:
    return schemathesis.openapi.from_url(f"{fuzz_gateway.url}/openapi.json", headers=AUTH)


def _fuzz(operation: Any, mode: GenerationMode = GenerationMode.POSITIVE) -> None:
    excluded = [not_a_server_error]
    if _is_websocket(operation):
        excluded.append(positive_data_acceptance)
    if mode is GenerationMode.NEGATIVE:
        excluded.append(negative_data_rejection)

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=15 if mode is GenerationMode.POSITIVE else 10,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def run(case: Any) -> None:
        case.call_and_validate(
            headers=AUTH,
            timeout=30,
            excluded_checks=excluded,
            additional_checks=[documented_busy_only],
        )

    try:
        run()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise  # a documented operation always has a valid request
        # nothing about the request can be wrong (no parameters, no body)


def test_api_conforms_to_openapi(fuzz_schema: Any) -> None:
    """Every operation; schemathesis.pytest.from_fixture does not work with pytest 9, so the
    operations are walked here and each runs its own bounded hypothesis test."""
    failures: list[str] = []
    count = 0
    for result in fuzz_schema.get_all_operations():
        operation = result.ok()
        count += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz(operation, mode)
            except BaseException as exc:  # noqa: BLE001 - ExceptionGroups; reported below
                if isinstance(exc, KeyboardInterrupt):
                    raise
                failures.append(f"{operation.label} ({mode.value}): {str(exc)[:1500]}")
    assert count > 10
    assert not failures, "\n\n".join(failures)

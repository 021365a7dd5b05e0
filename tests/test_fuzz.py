"""Fuzz every operation of a real gateway's /openapi.json with schemathesis.

One gateway (sim GPUs, one CPU slot, short default and kernel queue timeouts) serves the whole
module; each operation gets a bounded, derandomized set of generated requests carrying the token,
and every response must be a non-5xx that conforms to the documented schema, and every
schema-valid request must be accepted. Jobs and kernels that fuzzed requests start are ended when
the module's gateway stops (``stop(end_jobs=True)``).

The operations with path ids are first fuzzed with the ids of real records (a finished task
with output and a file, a registered model, a kernel holding a GPU, the kernelspecs), so that
they are fuzzed past their 404s (DELETE is not: the records last the whole run).

Then a smaller set of schema-violating requests per operation: each must answer a non-5xx that
conforms to the document (a 4xx with the error body). Whether such a request is refused is not
asked: the gateway ignores query parameters and JSON fields it does not know, as the seed did.

Two answers are judged by what the document says rather than by schemathesis's defaults:
- a 503 where the operation documents one (a kernel that waited --kernel-queue-timeout for its
  GPUs: the fuzz starts kernels that hold them) is the documented "busy" answer with an error
  body, not a server error; any other 5xx still fails;
- a WebSocket route cannot be opened by an HTTP client, so a plain GET answers the documented
  400 ("not an upgrade"); the acceptance of schema-valid data is not asked of it;
- an uploaded file whose content is refused (not a valid zip: 400 bad_archive) is not a
  schema-valid request refused: a schema says a part is binary, not what it holds.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
)

from tests.model_helpers import register_plain
from tests.support import TOKEN, Api, GatewayProcess

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"token {TOKEN}"}
BUSY = 503
FILE_CONTENT_CODES = {"bad_archive"}  # what a file holds, which no schema can describe


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


def accepted_but_file_content(ctx: Any, response: Any, case: Any) -> bool | None:
    """positive_data_acceptance, but for an uploaded file whose content is refused: a schema
    says a part is binary, not that it is a valid zip (400 with code bad_archive)."""
    if response.status_code == 400 and case.media_type == "multipart/form-data":
        body = response.json()
        if isinstance(body, dict) and body.get("code") in FILE_CONTENT_CODES:
            return None
    return positive_data_acceptance(ctx, response, case)


def _is_websocket(operation: Any) -> bool:
    return "101" in operation.definition.raw.get("responses", {})


@pytest.fixture(scope="module")
def fuzz_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    data: Path = tmp_path_factory.mktemp("fuzz-gateway")
    # Fuzzed kernels hold GPUs and the CPU slot: they wait 1 s for them and go after 30 s idle.
    extra = ["--cpu-slots", "1", "--default-timeout", "5"]
    extra += ["--kernel-queue-timeout", "1", "--kernel-idle-timeout", "30"]
    gw = GatewayProcess(data, extra=extra).start()
    yield gw
    gw.stop(end_jobs=True)


def _records(api: Api) -> dict[str, list[str]]:
    """Real ids for the path parameters: a finished task with output and a file, a model, a
    kernel holding a GPU, the kernelspecs."""
    code = "open('out.txt', 'w').write('x')\nprint('line one')\nprint('line two')"
    task = api.post("/run/sync", json={"code": code, "device": "cpu"})
    assert task.status_code == 200 and task.json()["status"] == "completed", task.text
    model = register_plain(api, name="fuzz-model")
    kernel = api.post("/api/kernels", json={"name": "vrungpu-1gpu"})
    assert kernel.status_code == 201, kernel.text
    return {
        "task_id": [task.json()["task_id"]],
        "model_id": [model["model_id"]],
        "path": ["out.txt"],
        "kernel_id": [kernel.json()["id"]],
        "name": ["vrungpu-cpu", "vrungpu-1gpu", "vrungpu-2gpu"],
    }


def _seeded(raw: dict[str, Any], ids: dict[str, list[str]]) -> dict[str, Any]:
    """Only the operations with path ids, those ids pinned to ``ids`` (DELETE left out)."""
    paths: dict[str, Any] = {}
    for path, ops in raw["paths"].items():
        for method, op in ops.items():
            params = [p for p in op.get("parameters", []) if p["in"] == "path"]
            if method == "delete" or not params or any(p["name"] not in ids for p in params):
                continue
            for param in params:
                param["schema"] = {"type": "string", "enum": ids[param["name"]]}
            paths.setdefault(path, {})[method] = op
    return {**raw, "paths": paths}


def _load(raw: dict[str, Any], url: str) -> Any:
    schema = schemathesis.openapi.from_dict(raw)
    schema.config.update(base_url=url)
    return schema


@pytest.fixture(scope="module")
def fuzz_schemas(fuzz_gateway: GatewayProcess) -> tuple[Any, Any, dict[str, list[str]]]:
    """The served document, its id-bearing operations with the ids of real records, the ids."""
    url = fuzz_gateway.url
    raw = requests.get(f"{url}/openapi.json", headers=AUTH, timeout=30).json()
    ids = _records(Api(url, TOKEN))
    return _load(raw, url), _load(_seeded(copy.deepcopy(raw), ids), url), ids


def _fuzz(operation: Any, mode: GenerationMode = GenerationMode.POSITIVE) -> None:
    excluded = [not_a_server_error, positive_data_acceptance]
    additional = [documented_busy_only]
    if not _is_websocket(operation):
        additional.append(accepted_but_file_content)
    if mode is GenerationMode.NEGATIVE:
        excluded.append(negative_data_rejection)

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=15 if mode is GenerationMode.POSITIVE else 10,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
    )
    def run(case: Any) -> None:
        case.call_and_validate(
            headers=AUTH,
            timeout=30,
            excluded_checks=excluded,
            additional_checks=additional,
        )

    try:
        run()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise  # a documented operation always has a valid request
        # nothing about the request can be wrong (no parameters, no body)
    except ValueError as exc:
        # schemathesis 4.32 cannot always make a schema-violating multipart body with a file
        # in it (raised while generating, before any request): nothing of ours was tested
        if mode is GenerationMode.POSITIVE or "Unsupported type: 'Binary'" not in str(exc):
            raise


def _describe(exc: BaseException) -> str:
    """The failure's text, and that of each one inside an exception group."""
    parts = [str(exc)[:1500]]
    for inner in getattr(exc, "exceptions", ())[:3]:
        parts.append(_describe(inner))
    return "\n".join(parts)


def _failures(schema: Any, modes: tuple[GenerationMode, ...], tag: str) -> tuple[int, list[str]]:
    """How many operations ``schema`` has, and what failed in each generation mode."""
    failures: list[str] = []
    count = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        count += 1
        for mode in modes:
            try:
                _fuzz(operation, mode)
            except BaseException as exc:  # noqa: BLE001 - ExceptionGroups; reported below
                if isinstance(exc, KeyboardInterrupt):
                    raise
                failures.append(f"{operation.label} ({tag}{mode.value}): {_describe(exc)}")
    return count, failures


def test_api_conforms_to_openapi(
    fuzz_gateway: GatewayProcess, fuzz_schemas: tuple[Any, Any, dict[str, list[str]]]
) -> None:
    """Every operation; schemathesis.pytest.from_fixture does not work with pytest 9, so the
    operations are walked here and each runs its own bounded hypothesis test."""
    served, seeded, ids = fuzz_schemas
    both = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    seeded_count, seeded_failures = _failures(seeded, (GenerationMode.POSITIVE,), "real ids, ")
    # The real kernel holds a GPU: gone before /run/sync asks for both (and waits for them).
    # The served run ends with the kernel routes, whose kernels hold GPUs for a while.
    api = Api(fuzz_gateway.url, TOKEN)
    for kernel_id in ids["kernel_id"]:
        assert api.delete(f"/api/kernels/{kernel_id}").status_code in (204, 404)  # 404: idle
    count, failures = _failures(served, both, "")
    assert count > 10 and seeded_count > 5
    assert not failures + seeded_failures, "\n\n".join(failures + seeded_failures)

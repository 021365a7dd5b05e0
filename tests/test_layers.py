"""The gateway's layers, read from the source: the store imports no engine module, the engine
imports no store module (it gets its repositories at composition, in service.py), and the
records and errors below both import neither."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vrungpu_gateway"


def imported(path: Path) -> set[str]:
    """Every module a file imports, by its full dotted name."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def offending(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{path.relative_to(PACKAGE.parent)}: {name}"
        for path in files
        for name in imported(path)
        if name.startswith(forbidden)
    )


@pytest.mark.parametrize(
    ("files", "forbidden"),
    [
        (sorted((PACKAGE / "store").rglob("*.py")), ("vrungpu_gateway.engine",)),
        (sorted((PACKAGE / "engine").rglob("*.py")), ("vrungpu_gateway.store",)),
        (
            [PACKAGE / "records.py", PACKAGE / "errors.py"],
            ("vrungpu_gateway.engine", "vrungpu_gateway.store", "vrungpu_gateway.api"),
        ),
    ],
    ids=["store", "engine", "records"],
)
def test_a_layer_imports_nothing_of_the_layer_it_must_not_know(
    files: list[Path], forbidden: tuple[str, ...]
) -> None:
    assert files
    assert offending(files, forbidden) == []


def test_the_check_sees_an_import_of_the_store(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from vrungpu_gateway.store import tasks as repo\n", encoding="utf-8")
    assert imported(module) == {"vrungpu_gateway.store", "vrungpu_gateway.store.tasks"}

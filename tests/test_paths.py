"""The one path-safety check."""

from __future__ import annotations

from pathlib import Path

import pytest

from vrungpu_gateway.engine.paths import resolve_inside, safe_relative
from vrungpu_gateway.errors import InvalidRequest


@pytest.mark.parametrize("raw", ["../x", "a/../../x", "/etc/passwd", "C:/x", "", "a\x00b", "\\x"])
def test_refuses_escapes(raw: str) -> None:
    with pytest.raises(InvalidRequest):
        safe_relative(raw)


def test_normalises_harmless_paths() -> None:
    assert str(safe_relative("./a//b/c.py")) == "a/b/c.py"


def test_symlink_out_of_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "ok.txt").write_text("x")
    (root / "link").symlink_to(tmp_path)
    assert resolve_inside(root, "ok.txt") == (root / "ok.txt").resolve()
    with pytest.raises(InvalidRequest):
        resolve_inside(root, "link/secret")

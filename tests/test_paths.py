"""The one path-safety check, and opening a file a job can change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vrungpu_gateway.engine.paths import open_inside, resolve_inside, safe_relative
from vrungpu_gateway.engine.worker_process import read_result
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


def test_open_inside_opens_a_regular_file_never_through_a_link_or_a_fifo(tmp_path: Path) -> None:
    """A job may swap a folder or its file for a link (or a FIFO) at any time: each step is
    opened without following one, and a FIFO never blocks the caller."""
    root, outside = tmp_path / "ws", tmp_path / "secret"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "token").write_text("root only")
    (root / "sub" / "out.txt").write_text("the job's")
    (root / "leaf").symlink_to(outside / "token")
    (root / "dir").symlink_to(outside)
    os.mkfifo(root / "fifo")
    fd = open_inside(root, "sub/out.txt")
    with os.fdopen(fd) as file:
        assert file.read() == "the job's"
    for raw in ("leaf", "dir/token", "fifo", "sub", "missing", "sub/missing"):
        with pytest.raises(FileNotFoundError):
            open_inside(root, raw)
    with pytest.raises(InvalidRequest):
        open_inside(root, "../secret/token")


def test_a_result_file_swapped_for_a_link_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "secret.json").write_text('{"secret": 1}')
    (tmp_path / "result.json").symlink_to(tmp_path / "secret.json")
    with pytest.raises(ValueError, match="not a regular file"):
        read_result(tmp_path)

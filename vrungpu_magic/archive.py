"""Zipping a project folder on the fly, honouring `.vrungpuignore` / `.gitignore` patterns."""

from __future__ import annotations

import fnmatch
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path

ALWAYS_IGNORED = [
    ".git/",
    "__pycache__/",
    ".ipynb_checkpoints/",
    ".venv/",
    "venv/",
    "node_modules/",
    "*.pyc",
    ".DS_Store",
]
IGNORE_FILES = (".vrungpuignore", ".gitignore")


def read_ignore_patterns(folder: Path) -> list[str]:
    """Patterns of the folder's `.vrungpuignore` (or `.gitignore` when there is none)."""
    for name in IGNORE_FILES:
        path = folder / name
        if path.is_file():
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    return []


def is_ignored(rel: str, is_dir: bool, patterns: Iterable[str]) -> bool:
    """gitignore-style matching: `dir/`, `*.ext`, `/anchored`, `path/inside`, and `!negation`."""
    ignored = False
    name = rel.rsplit("/", 1)[-1]
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        if pattern.endswith("/"):
            if not is_dir:
                continue
            pattern = pattern[:-1]
        anchored = pattern.startswith("/") or "/" in pattern
        pattern = pattern.lstrip("/")
        hit = fnmatch.fnmatch(rel, pattern) if anchored else fnmatch.fnmatch(name, pattern)
        if hit:
            ignored = not negate
    return ignored


def iter_project_files(folder: Path, patterns: list[str] | None = None) -> list[Path]:
    """Files of ``folder`` that are not ignored, as paths relative to it."""
    folder = folder.resolve()
    rules = ALWAYS_IGNORED + (read_ignore_patterns(folder) if patterns is None else patterns)
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        base = Path(root).relative_to(folder)
        dirs[:] = sorted(d for d in dirs if not is_ignored((base / d).as_posix(), True, rules))
        for name in sorted(files):
            rel = (base / name).as_posix()
            if not is_ignored(rel, False, rules) and not (Path(root) / name).is_symlink():
                found.append(Path(rel))
    return found


def zip_project(folder: Path, dest: Path, patterns: list[str] | None = None) -> Path:
    """Write ``folder``'s files (ignores applied) into the zip ``dest``, paths relative."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for rel in iter_project_files(folder, patterns):
            archive.write(folder / rel, rel.as_posix())
    return dest

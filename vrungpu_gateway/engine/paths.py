"""The one path-safety check: a user-given relative path must stay inside its root."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from vrungpu_gateway.errors import InvalidRequest


def safe_relative(raw: str, *, what: str = "path") -> PurePosixPath:
    """Validate a user-given relative path (no absolute, no `..`, no empty, no NUL)."""
    if not raw or "\x00" in raw:
        raise InvalidRequest(f"{what} is empty or invalid", code="unsafe_path")
    rel = PurePosixPath(raw.replace("\\", "/"))
    if rel.is_absolute() or raw.startswith(("/", "\\")) or (len(raw) > 1 and raw[1] == ":"):
        raise InvalidRequest(f"{what} must be relative: {raw!r}", code="unsafe_path")
    if any(part == ".." for part in rel.parts):
        raise InvalidRequest(f"{what} escapes its folder: {raw!r}", code="unsafe_path")
    parts = [p for p in rel.parts if p not in ("", ".")]
    if not parts:
        raise InvalidRequest(f"{what} is empty or invalid", code="unsafe_path")
    return PurePosixPath(*parts)


def resolve_inside(root: Path, raw: str, *, what: str = "path") -> Path:
    """Join ``raw`` to ``root`` and refuse anything (symlinks included) that leaves it."""
    rel = safe_relative(raw, what=what)
    root_real = Path(os.path.realpath(root))
    target = Path(os.path.realpath(root_real / rel))
    if target != root_real and root_real not in target.parents:
        raise InvalidRequest(f"{what} escapes its folder: {raw!r}", code="unsafe_path")
    return target

"""The one path-safety check: a user-given relative path must stay inside its root, and a
file a job can change is opened without following a link."""

from __future__ import annotations

import os
import stat
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


def open_inside(root: Path, raw: str, *, what: str = "path") -> int:
    """A read-only fd of the regular file ``raw`` names inside ``root``. Each folder on the way
    is opened relative to the last without following a link, and the file itself too, without
    blocking on a FIFO: a job that swaps a folder or its file for a link (or a FIFO) between
    our check and our read gets nothing. FileNotFoundError when there is no such file."""
    rel = safe_relative(raw, what=what)
    try:
        folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise FileNotFoundError(raw) from exc
    try:
        for part in rel.parts[:-1]:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=folder)
            os.close(folder)
            folder = inner
        fd = os.open(rel.parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
    except OSError as exc:
        raise FileNotFoundError(raw) from exc
    finally:
        os.close(folder)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FileNotFoundError(raw)
    return fd


def read_own_file(path: Path, owner: int | None, limit: int | None = None) -> bytes | None:
    """The bytes of ``path`` if it is a regular file (not a link, a FIFO or a device) owned by
    ``owner`` when given and at most ``limit`` bytes (also if it grew as we read); None
    otherwise. Opened once, without
    following a link, so a job's uid cannot swap in a root file between check and read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    info = os.fstat(fd)
    if (
        not stat.S_ISREG(info.st_mode)
        or (owner is not None and info.st_uid != owner)
        or (limit is not None and info.st_size > limit)
    ):
        os.close(fd)
        return None
    with os.fdopen(fd, "rb") as file:
        data = file.read() if limit is None else file.read(limit + 1)
    return None if limit is not None and len(data) > limit else data

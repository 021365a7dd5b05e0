"""Job workspaces under ``data/workspaces/{task_id}/``: cell code, uploaded files, zip archives.

Zips go through the one zip check (``archive.py``): paths, symlinks, member count, size
and compression ratio. These functions block (disk I/O): run them off the event loop.
"""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from vrungpu_gateway.engine.archive import Unpacker, ZipLimits, checked_members, open_zip
from vrungpu_gateway.engine.paths import safe_relative
from vrungpu_gateway.errors import InvalidRequest

CODE_FILE = "main.py"


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    modified: float


def write_code(workspace: Path, code: str) -> str:
    workspace.mkdir(parents=True, exist_ok=False)
    (workspace / CODE_FILE).write_text(code, encoding="utf-8")
    return CODE_FILE


def place_script(workspace: Path, upload: Path, filename: str) -> str:
    """A single uploaded .py file becomes the workspace's entry point."""
    name = PurePosixPath(filename.replace("\\", "/")).name  # stored by basename, always
    if not name or name in (".", ".."):
        raise InvalidRequest(f"invalid file name {filename!r}", code="bad_upload")
    workspace.mkdir(parents=True, exist_ok=False)
    shutil.move(str(upload), workspace / name)
    return name


def _strip_single_root(
    members: list[tuple[zipfile.ZipInfo, PurePosixPath]], entry_point: str
) -> PurePosixPath | None:
    """The one top-level folder to strip, when the entry point lives inside it."""
    if any(str(rel) == entry_point for _, rel in members):
        return None
    roots = {rel.parts[0] for _, rel in members if not rel.name.startswith("__MACOSX")}
    roots.discard("__MACOSX")
    if len(roots) == 1:
        root = PurePosixPath(roots.pop())
        if any(rel == root / entry_point for _, rel in members):
            return root
    return None


def extract_project(
    workspace: Path, archive_path: Path, entry_point: str, *, limits: ZipLimits
) -> str:
    """Unpack a zip into ``workspace`` and return the entry point relative to it; nothing
    is written unless the whole zip passes the checks, nothing is left when one fails."""
    entry = str(safe_relative(entry_point, what="entry_point"))
    with open_zip(archive_path, limits) as archive:
        members = [(m.info, m.rel) for m in checked_members(archive, limits)]
        root = _strip_single_root(members, entry)
        names = {
            str(rel.relative_to(root)) if root else str(rel)
            for _, rel in members
            if root is None or rel.parts[0] == root.name
        }
        if entry not in names:
            scripts = sorted(n for n in names if n.endswith(".py") and "__MACOSX" not in n)
            listing = ", ".join(scripts[:20]) or "none"
            raise InvalidRequest(
                f"entry point {entry!r} not in the archive (its .py files: {listing})",
                code="entry_point_missing",
            )
        workspace.mkdir(parents=True, exist_ok=False)
        try:
            _unpack(Unpacker(archive, limits), workspace, members, root)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            shutil.rmtree(workspace, ignore_errors=True)
            raise InvalidRequest(f"corrupt zip archive: {exc}", code="bad_archive") from exc
        except BaseException:
            shutil.rmtree(workspace, ignore_errors=True)
            raise
    return entry


def _unpack(
    unpacker: Unpacker,
    workspace: Path,
    members: list[tuple[zipfile.ZipInfo, PurePosixPath]],
    root: PurePosixPath | None,
) -> None:
    for info, rel in members:
        if root is not None:
            if rel.parts[0] != root.name or rel == root:
                continue
            rel = rel.relative_to(root)
        target = workspace / rel
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        unpacker.write(info, target)


def list_files(workspace: Path) -> list[FileEntry]:
    if not workspace.is_dir():
        return []
    entries = []
    for top, _dirs, files in os.walk(workspace):  # a running job may change it as we look
        for name in files:
            path = Path(top) / name
            try:
                st = path.lstat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                entries.append(FileEntry(str(path.relative_to(workspace)), st.st_size, st.st_mtime))
    return sorted(entries, key=lambda e: e.path)


def remove_workspace(workspace: Path) -> None:
    shutil.rmtree(workspace, ignore_errors=True)

"""Files of registered models under ``data/models/{model_id}/``: staging, hashing, zips.

A model folder holds the artifact (``model.pt``, ``model.onnx``, ... stored by basename, or a
whole folder's contents) and, for a file registered from a task beside a ``handler.py``, its
companions: every ``*.py`` and ``*.json`` file of that same folder (not sub-folders), so the
handler can import the model code. ``file_size`` and ``sha256`` describe exactly what
``GET /model/{id}/download`` returns: the artifact file, or a folder as a deterministic zip.
Every function here blocks (disk I/O): run them off the event loop.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from vrungpu_gateway.engine.archive import Unpacker, ZipLimits, checked_members, open_zip
from vrungpu_gateway.errors import InvalidRequest
from vrungpu_gateway.records import BUILTIN_HANDLER, CUSTOM_HANDLER, ArtifactKind

FRAMEWORKS = {
    ".pt": "pytorch",
    ".pth": "pytorch",
    ".pt2": "pytorch",
    ".ckpt": "pytorch",
    ".safetensors": "safetensors",
    ".onnx": "onnx",
    ".pkl": "pickle",
    ".pickle": "pickle",
    ".joblib": "scikit-learn",
    ".h5": "keras",
    ".keras": "keras",
    ".gguf": "gguf",
}
MODEL_SUFFIXES = frozenset(FRAMEWORKS) | {".bin"}  # what save_model looks for
COMPANION_SUFFIXES = (".py", ".json")
MAX_COMPANION_BYTES = 1024 * 1024
METRICS_FILE = "metrics.json"
MAX_METRICS_BYTES = 64 * 1024
SKIPPED_DIRS = frozenset({"__pycache__", ".git", ".ipynb_checkpoints"})
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class StoredArtifact:
    kind: ArtifactKind
    file_name: str
    file_size: int
    sha256: str
    files: list[str]
    handler: str


def safe_basename(filename: str) -> str:
    """The last part of an uploaded file name: `../../x.pt` and `/abs/x.pt` become `x.pt`."""
    name = PurePosixPath(filename.replace("\\", "/")).name
    if not name or name in (".", "..") or "\x00" in name:
        raise InvalidRequest(f"invalid file name {filename!r}", code="bad_upload")
    return name


def guess_framework(file_name: str) -> str | None:
    return FRAMEWORKS.get(PurePosixPath(file_name).suffix.lower())


def sha256_of(fh: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := fh.read(CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return sha256_of(fh)


def stored_files(folder: Path) -> list[str]:
    """Regular files under ``folder`` (symlinks and caches left out), relative, sorted."""
    found = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if path.is_file() and not path.is_symlink() and not SKIPPED_DIRS & set(rel.parts):
            found.append(rel.as_posix())
    return sorted(found)


# -- staging a new model folder ----------------------------------------------------------------
def stage_upload(
    staging: Path,
    *,
    upload: Path,
    filename: str,
    extras: list[tuple[Path, str]],
    unpack: bool,
    limits: ZipLimits,
) -> StoredArtifact:
    """Fill ``staging`` from uploaded files: the artifact plus companions, or an unpacked zip."""
    name = safe_basename(filename)
    staging.mkdir(parents=True)
    if unpack:
        if extras:
            raise InvalidRequest("unpack takes one .zip and no other files", code="bad_upload")
        folder_name = _extract_zip(staging, upload, limits=limits)
        return describe(staging, ArtifactKind.FOLDER, folder_name or PurePosixPath(name).stem)
    placed = {name}
    shutil.move(upload, staging / name)
    for path, extra_name in extras:
        extra = safe_basename(extra_name)
        if extra in placed:
            raise InvalidRequest(f"two uploaded files are called {extra!r}", code="bad_upload")
        placed.add(extra)
        shutil.move(path, staging / extra)
    return describe(staging, ArtifactKind.FILE, name)


def stage_from_workspace(staging: Path, *, source: Path) -> StoredArtifact:
    """Copy a workspace file (with its companions when a handler.py is beside it) or folder."""
    if source.is_dir():
        shutil.copytree(source, staging, ignore=_skip_links_and_caches)
        return describe(staging, ArtifactKind.FOLDER, source.name)
    if not source.is_file():
        raise InvalidRequest(f"{source.name!r} is not a regular file or folder", code="bad_path")
    staging.mkdir(parents=True)
    shutil.copyfile(source, staging / source.name)
    if (source.parent / CUSTOM_HANDLER).is_file():
        for companion in _companions(source.parent, skip=source.name):
            shutil.copyfile(companion, staging / companion.name)
    return describe(staging, ArtifactKind.FILE, source.name)


def _companions(folder: Path, *, skip: str) -> list[Path]:
    return [
        path
        for path in sorted(folder.iterdir())
        if path.name != skip
        and path.suffix in COMPANION_SUFFIXES
        and path.is_file()
        and not path.is_symlink()
        and path.stat().st_size <= MAX_COMPANION_BYTES
    ]


def _skip_links_and_caches(folder: str, names: list[str]) -> set[str]:
    """copytree's ``ignore``: symlinks could point anywhere on the host, so none are copied;
    nor caches, nor pipes and devices."""
    skipped = set()
    for name in names:
        path = os.path.join(folder, name)
        if (
            name in SKIPPED_DIRS
            or os.path.islink(path)
            or not os.path.isdir(path)
            and not os.path.isfile(path)
        ):
            skipped.add(name)
    return skipped


def _extract_zip(dest: Path, archive_path: Path, *, limits: ZipLimits) -> str | None:
    """Unpack a zip into ``dest`` (one top folder stripped); returns that folder's name."""
    with open_zip(archive_path, limits) as archive:
        members = checked_members(archive, limits)
        roots = {m.rel.parts[0] for m in members if len(m.rel.parts) > 1 or m.info.is_dir()}
        flat = any(len(m.rel.parts) == 1 and not m.info.is_dir() for m in members)
        root = roots.pop() if len(roots) == 1 and not flat else None
        unpacker = Unpacker(archive, limits)
        for member in members:
            parts = member.rel.parts[1:] if root else member.rel.parts
            if member.info.is_dir() or not parts:
                continue
            target = dest.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            unpacker.write(member.info, target)
    return root


def describe(folder: Path, kind: ArtifactKind, file_name: str) -> StoredArtifact:
    """Size, digest, file list and handler of a filled model folder."""
    files = stored_files(folder)
    if kind is ArtifactKind.FILE:
        artifact = folder / file_name
        size, digest = artifact.stat().st_size, sha256_file(artifact)
    else:
        if not files:
            raise InvalidRequest("the folder holds no files", code="empty_model")
        scratch = folder.with_name(folder.name + ".zip")
        try:
            write_folder_zip(folder, file_name, scratch)
            size, digest = scratch.stat().st_size, sha256_file(scratch)
        finally:
            scratch.unlink(missing_ok=True)
    handler = CUSTOM_HANDLER if (folder / CUSTOM_HANDLER).is_file() else BUILTIN_HANDLER
    return StoredArtifact(kind, file_name, size, digest, files, handler)


def write_folder_zip(folder: Path, root_name: str, out: Path) -> None:
    """A byte-for-byte reproducible zip of ``folder`` (sorted, stored, fixed dates)."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        for rel in stored_files(folder):
            source = folder / rel
            info = zipfile.ZipInfo(f"{root_name}/{rel}", date_time=ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            size = source.stat().st_size
            with open(source, "rb") as src, zf.open(info, "w", force_zip64=size > 2**31) as dst:
                shutil.copyfileobj(src, dst, CHUNK)


# -- what a finished task left behind -------------------------------------------------------------
def find_artifact(workspace: Path) -> Path | None:
    """The newest model file (by suffix) at the workspace root, else anywhere below it."""
    if not workspace.is_dir():
        return None
    top = [p for p in workspace.iterdir() if _is_model_file(p)]
    if not top:
        top = [
            p
            for p in workspace.rglob("*")
            if _is_model_file(p) and not SKIPPED_DIRS & set(p.relative_to(workspace).parts)
        ]
    return max(top, key=lambda p: (p.stat().st_mtime, p.name)) if top else None


def _is_model_file(path: Path) -> bool:
    return path.suffix.lower() in MODEL_SUFFIXES and path.is_file() and not path.is_symlink()


def read_metrics(workspace: Path) -> dict[str, Any] | None:
    """The task's ``metrics.json`` (a JSON object of at most 64 KB), if it wrote one."""
    path = workspace / METRICS_FILE
    if not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_METRICS_BYTES:
        return None
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    return metrics if isinstance(metrics, dict) else None


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)

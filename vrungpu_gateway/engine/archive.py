"""The one zip check: member count, total unpacked size and compression ratio are bounded
before anything is extracted (from the end record and the central directory), and the bytes
really written are counted again while extracting, should a header lie.

Every member also goes through the path-safety check; symlinks are refused. These functions
block (disk I/O): run them off the event loop.
"""

from __future__ import annotations

import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING

from vrungpu_gateway.engine.paths import safe_relative
from vrungpu_gateway.errors import InvalidRequest, TooLarge

if TYPE_CHECKING:
    from vrungpu_gateway.config import GatewayConfig

CHUNK = 1024 * 1024
RATIO_FLOOR_BYTES = 16 * 2**20  # a zip may always unpack to this much, whatever its ratio
CODE = "archive_too_large"


@dataclass(frozen=True)
class ZipLimits:
    max_bytes: int = 20480 * 2**20  # total unpacked size
    max_ratio: float = 200.0  # total unpacked size / the zip's own size
    max_members: int = 20000

    @classmethod
    def from_config(cls, config: GatewayConfig) -> ZipLimits:
        return cls(
            max_bytes=config.max_unpack_mb * 2**20,
            max_ratio=config.max_zip_ratio,
            max_members=config.max_zip_members,
        )

    def allowed_bytes(self, archive_size: int) -> int:
        """The most a zip of ``archive_size`` bytes may unpack to."""
        by_ratio = max(int(self.max_ratio * archive_size), RATIO_FLOOR_BYTES)
        return min(self.max_bytes, by_ratio)


@dataclass(frozen=True)
class Member:
    info: zipfile.ZipInfo
    rel: PurePosixPath  # safe, relative


def open_zip(path: Path, limits: ZipLimits) -> zipfile.ZipFile:
    """The zip at ``path``, its member count checked before its directory is read."""
    declared = _declared_members(path)
    if declared is not None and declared > limits.max_members:
        raise TooLarge(_too_many(declared, limits), code=CODE)
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidRequest(f"not a valid zip archive: {exc}", code="bad_archive") from exc


def checked_members(archive: zipfile.ZipFile, limits: ZipLimits) -> list[Member]:
    """Every member, once count, total size, ratio, paths and symlinks are all acceptable."""
    infos = archive.infolist()
    if len(infos) > limits.max_members:
        raise TooLarge(_too_many(len(infos), limits), code=CODE)
    allowed = limits.allowed_bytes(_size_of(archive))
    members, total = [], 0
    for info in infos:
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InvalidRequest(f"archive holds a symlink: {info.filename!r}", code="unsafe_path")
        total += info.file_size
        if total > allowed:
            raise TooLarge(_too_big(allowed, limits), code=CODE)
        members.append(Member(info, safe_relative(info.filename, what="archive member")))
    return members


class Unpacker:
    """Writes checked members of one zip, counting what is really written against the limit
    (a member that unpacks beyond its header's size is refused too)."""

    def __init__(self, archive: zipfile.ZipFile, limits: ZipLimits) -> None:
        self.archive = archive
        self.limits = limits
        self.allowed = limits.allowed_bytes(_size_of(archive))
        self.written = 0

    def write(self, info: zipfile.ZipInfo, target: Path) -> None:
        """Unpack one member to ``target``; a damaged, encrypted or oddly compressed member
        is a bad request, not a server error."""
        try:
            with self.archive.open(info) as src, open(target, "wb") as dst:
                self._copy(info, src, dst)
        except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError) as e:
            raise InvalidRequest(f"corrupt zip archive: {e}", code="bad_archive") from e

    def _copy(self, info: zipfile.ZipInfo, src: IO[bytes], dst: IO[bytes]) -> None:
        size = 0
        while chunk := src.read(CHUNK):
            size += len(chunk)
            self.written += len(chunk)
            if size > info.file_size:
                raise TooLarge(
                    f"archive member {info.filename!r} unpacks beyond its stated size", code=CODE
                )
            if self.written > self.allowed:
                raise TooLarge(_too_big(self.allowed, self.limits), code=CODE)
            dst.write(chunk)


def _declared_members(path: Path) -> int | None:
    """The member count the zip's end record states (zip64 too), read before the directory."""
    end_record = getattr(zipfile, "_EndRecData", None)  # the stdlib's own reader
    if end_record is None:
        return None
    try:
        with open(path, "rb") as fh:
            end = end_record(fh)
    except (OSError, ValueError, zipfile.BadZipFile):
        return None  # ZipFile will say what is wrong
    return int(end[4]) if end else None  # _ECD_ENTRIES_TOTAL


def _size_of(archive: zipfile.ZipFile) -> int:
    fp = archive.fp
    if fp is None:
        return 0
    position = fp.tell()
    size = fp.seek(0, 2)
    fp.seek(position)
    return size


def _too_many(count: int, limits: ZipLimits) -> str:
    return f"archive has {count} members, more than {limits.max_members} (--max-zip-members)"


def _too_big(allowed: int, limits: ZipLimits) -> str:
    if allowed < limits.max_bytes:
        return (
            f"archive unpacks to more than {limits.max_ratio:g} times its size "
            f"({allowed // 2**20} MB; --max-zip-ratio)"
        )
    return f"archive unpacks to more than {limits.max_bytes // 2**20} MB (--max-unpack-mb)"

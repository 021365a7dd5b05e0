"""Task log files: one file per stream under ``data/logs/``, appended as output arrives.

Byte offsets into these files are the positions clients resume from, over HTTP and over
the WebSocket alike. ``OutputStream`` turns raw chunks into lines (bounded memory whatever
the job prints) and feeds the progress parser with ``\\r``-separated segments too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from vrungpu_gateway.engine.progress import Progress, parse_progress
from vrungpu_gateway.protocol import STREAMS

MAX_LINE_BYTES = 64 * 1024
TAIL_BYTES = 16 * 1024


def log_path(logs_dir: Path, task_id: str, stream: str) -> Path:
    return logs_dir / f"{task_id}.{stream}.log"


def decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Line:
    stream: str
    text: str
    offset: int  # byte offset just past this line's terminator


class OutputStream:
    """Appends one stream's chunks to its file and yields complete lines and progress."""

    def __init__(
        self,
        path: Path,
        stream: str,
        on_line: Callable[[Line], None],
        on_progress: Callable[[Progress], None],
    ) -> None:
        self.stream = stream
        self._file: BinaryIO = open(path, "ab")  # noqa: SIM115 - lives as long as the job
        self.offset = self._file.tell()
        self._pending = b""
        self._on_line = on_line
        self._on_progress = on_progress

    def feed(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._file.flush()
        start = self.offset
        self.offset += len(chunk)
        data = self._pending + chunk
        base = start - len(self._pending)
        pos = 0
        while (nl := data.find(b"\n", pos)) != -1:
            self._emit(data[pos:nl], base + nl + 1)
            pos = nl + 1
        rest = data[pos:]
        if b"\r" in rest:  # tqdm redraws a bar with \r and no \n: read progress as it comes
            self._progress_from(rest[: rest.rfind(b"\r")])
        if len(rest) > MAX_LINE_BYTES:
            self._emit(rest, base + len(data))
            rest = b""
        self._pending = rest

    def close(self) -> None:
        if self._pending:
            self._emit(self._pending, self.offset)
            self._pending = b""
        self._file.close()

    def _emit(self, raw: bytes, end_offset: int) -> None:
        text = decode(raw)
        if "\r" in text:
            self._progress_from(raw)
            segments = [s for s in text.split("\r") if s.strip()]
            text = segments[-1] if segments else ""
        elif "PROGRESS" in text or "%|" in text:
            progress = parse_progress(text)
            if progress is not None:
                self._on_progress(progress)
        self._on_line(Line(self.stream, text, end_offset))

    def _progress_from(self, raw: bytes) -> None:
        for segment in reversed(decode(raw).split("\r")):
            progress = parse_progress(segment) if segment else None
            if progress is not None:
                self._on_progress(progress)
                return


def read_log(
    logs_dir: Path, task_id: str, stream: str, *, offset: int = 0, limit_bytes: int | None = None
) -> tuple[bytes, int]:
    """Bytes of one stream from ``offset`` on (at most ``limit_bytes``), and the end offset."""
    path = log_path(logs_dir, task_id, stream)
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read() if limit_bytes is None else fh.read(limit_bytes)
    except FileNotFoundError:
        return b"", offset
    return data, offset + len(data)


def log_size(logs_dir: Path, task_id: str, stream: str) -> int:
    try:
        return os.path.getsize(log_path(logs_dir, task_id, stream))
    except FileNotFoundError:
        return 0


def read_tail(
    logs_dir: Path, task_id: str, stream: str, *, max_bytes: int = TAIL_BYTES
) -> tuple[str, bool]:
    """The last ``max_bytes`` of a stream as text, and whether older output was cut."""
    size = log_size(logs_dir, task_id, stream)
    start = max(0, size - max_bytes)
    data, _ = read_log(logs_dir, task_id, stream, offset=start)
    if start:
        nl = data.find(b"\n")
        data = data[nl + 1 :] if 0 <= nl < len(data) - 1 else data
    return decode(data), start > 0


def tail_lines(logs_dir: Path, task_id: str, stream: str, lines: int) -> tuple[str, int]:
    """The last ``lines`` lines of a stream, and the offset where they start."""
    size = log_size(logs_dir, task_id, stream)
    block = 64 * 1024
    start = size
    data = b""
    while start > 0 and data.count(b"\n") <= lines:
        start = max(0, start - block)
        data, _ = read_log(logs_dir, task_id, stream, offset=start, limit_bytes=size - start)
    parts = data.split(b"\n")
    trailing_nl = data.endswith(b"\n")
    keep = parts[-(lines + 1) :] if trailing_nl else parts[-lines:]
    if lines <= 0:
        keep = [b""] if trailing_nl else []
    text = b"\n".join(keep)
    return decode(text), size - len(text)


def remove_logs(logs_dir: Path, task_id: str) -> None:
    for stream in STREAMS:
        log_path(logs_dir, task_id, stream).unlink(missing_ok=True)

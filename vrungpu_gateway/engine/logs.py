"""Task log files: one file per stream under ``data/logs/``, appended as output arrives.

Byte offsets into these files are the positions clients resume from, over HTTP and over
the WebSocket alike. A stream is cut into lines by one rule, ``split_lines``: at each ``\\n``,
and every ``MAX_LINE_BYTES`` of a line that has none. The rule depends only on the bytes since
the previous cut, so the live ``OutputStream`` and a replay from the file cut at the same
offsets: an offset just past a line is a valid place to resume from, whoever reported it.
A line's text is ``line_text``: UTF-8 (invalid bytes become U+FFFD) and, for a ``\\r``
redraw such as a tqdm bar, only its last non-blank segment.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

from vrungpu_gateway.engine.progress import Progress, parse_progress
from vrungpu_gateway.protocol import STREAMS

MAX_LINE_BYTES = 64 * 1024
TAIL_BYTES = 16 * 1024
UTF8_CONTINUATION = bytes(range(0x80, 0xC0))


def log_path(logs_dir: Path, task_id: str, stream: str) -> Path:
    return logs_dir / f"{task_id}.{stream}.log"


def decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def split_lines(data: bytes, *, final: bool = False) -> tuple[list[tuple[bytes, int]], int]:
    """Cut ``data`` (which starts at a line start) into lines the way the live stream does.

    Returns ``[(raw line without its \\n, position just past it in data)]`` and how many bytes
    those lines cover. An unterminated rest of at most ``MAX_LINE_BYTES`` stays uncut (it is
    still being written) unless ``final`` (the stream is closed).
    """
    lines: list[tuple[bytes, int]] = []
    pos, size, find = 0, len(data), data.find
    while pos < size:
        nl = find(b"\n", pos, pos + MAX_LINE_BYTES + 1)
        if nl != -1:
            lines.append((data[pos:nl], nl + 1))
            pos = nl + 1
        elif size - pos > MAX_LINE_BYTES:
            lines.append((data[pos : pos + MAX_LINE_BYTES], pos + MAX_LINE_BYTES))
            pos += MAX_LINE_BYTES
        else:
            break
    if final and pos < size:
        lines.append((data[pos:], size))
        pos = size
    return lines, pos


def line_text(raw: bytes) -> str:
    """The text a line shows: decoded, and for ``\\r`` redraws the last non-blank segment."""
    text = decode(raw)
    if "\r" in text:
        segments = [s for s in text.split("\r") if s.strip()]
        text = segments[-1] if segments else ""
    return text


class Line(NamedTuple):  # a tuple: made once per output line, so cheap to build
    stream: str
    text: str
    offset: int  # byte offset just past this line's terminator


class OutputStream:
    """Cuts one stream's chunks into lines and progress, one callback per chunk.

    With ``offset=None`` it also appends the chunks to the stream's file (a runner that hands
    us its output); with an offset, someone else (the job's shim) writes the file and the
    chunks are what it wrote from that offset on, which must be a line start.
    """

    def __init__(
        self,
        path: Path,
        stream: str,
        on_lines: Callable[[list[Line]], None],
        on_progress: Callable[[Progress], None],
        *,
        offset: int | None = None,
    ) -> None:
        self.stream = stream
        self._file: BinaryIO | None = None
        if offset is None:
            self._file = open(path, "ab")  # noqa: SIM115 - lives as long as the job
            offset = self._file.tell()
        self.offset = offset
        self._pending = b""
        self._on_lines = on_lines
        self._on_progress = on_progress

    def feed(self, chunk: bytes) -> None:
        if self._file is not None:
            self._file.write(chunk)
            self._file.flush()
        data = self._pending + chunk
        base = self.offset - len(self._pending)
        self.offset += len(chunk)
        raws, consumed = split_lines(data)
        if raws:
            self._on_lines([self._line(raw, base + end) for raw, end in raws])
        rest = data[consumed:]
        if b"\r" in rest:  # tqdm redraws a bar with \r and no \n: read progress as it comes
            self._progress_from(rest)  # a bar cut short cannot match: the pattern needs "%|"
        self._pending = rest

    def close(self) -> None:
        if self._pending:
            self._on_lines([self._line(self._pending, self.offset)])
            self._pending = b""
        if self._file is not None:
            self._file.close()

    def _line(self, raw: bytes, end_offset: int) -> Line:
        text = line_text(raw)
        if b"\r" in raw:
            self._progress_from(raw)
        elif "PROGRESS" in text or "%|" in text:
            progress = parse_progress(text)
            if progress is not None:
                self._on_progress(progress)
        return Line(self.stream, text, end_offset)

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
        # one long line: at least do not begin inside a UTF-8 character
        data = data[nl + 1 :] if 0 <= nl < len(data) - 1 else data.lstrip(UTF8_CONTINUATION)
    return decode(data), start > 0


@dataclass(frozen=True)
class LogSlice:
    """Whole lines of one stream between two offsets (see ``read_lines``)."""

    offset: int  # where the slice starts
    next_offset: int  # just past its last whole line: where to read (or subscribe) next
    size: int  # the file's size when read
    content: str  # the raw text of [offset, next_offset), \\r kept
    lines: list[str]  # the same range as lines, exactly as the WebSocket sends them
    partial: str  # a running task's unfinished last line (line_text), not in next_offset
    complete: bool  # the read reached the end of the file (not cut by limit_bytes)


def read_lines(
    logs_dir: Path, task_id: str, stream: str, *, offset: int, limit_bytes: int, final: bool
) -> LogSlice:
    """Whole lines from ``offset`` (clamped to the file), at most ``limit_bytes`` of them.

    ``final`` says the stream is closed (the task ended): its unterminated last line then
    counts as a line. While it runs, that line is only reported as ``partial``.
    """
    size = log_size(logs_dir, task_id, stream)
    start = min(max(0, offset), size)
    data, end = read_log(logs_dir, task_id, stream, offset=start, limit_bytes=limit_bytes)
    at_eof = end >= size
    raws, consumed = split_lines(data, final=final and at_eof)
    partial = line_text(data[consumed:]) if at_eof and consumed < len(data) else ""
    return LogSlice(
        offset=start,
        next_offset=start + consumed,
        size=size,
        content=decode(data[:consumed]),
        lines=[line_text(raw) for raw, _ in raws],
        partial=partial,
        complete=at_eof,
    )


def tail_offset(
    logs_dir: Path, task_id: str, stream: str, lines: int, *, final: bool, max_bytes: int
) -> int:
    """Where the last ``lines`` lines of a stream start (a line start: a valid resume offset).

    Lines are counted by ``\\n``; a running task's unterminated last line is not one yet.
    The tail is kept within the last ``max_bytes`` of the file.
    """
    size = log_size(logs_dir, task_id, stream)
    start, data, block = size, b"", 64 * 1024
    while start > 0 and data.count(b"\n") <= lines and size - start < max_bytes:
        start = max(0, start - block, size - max_bytes)
        block *= 2
        data, _ = read_log(logs_dir, task_id, stream, offset=start, limit_bytes=size - start)
    parts = data.split(b"\n")
    fragment = parts.pop()  # after the last \n ('' when the file ends with one)
    keep = max(0, lines - 1) if final and fragment else max(0, lines)
    if final and fragment and lines <= 0:
        return size
    if start > 0 and len(parts) <= keep:  # max_bytes reached: begin at its first line start
        return start + len(parts[0]) + 1 if parts else start
    return size - len(fragment) - sum(len(p) + 1 for p in parts[max(0, len(parts) - keep) :])


def remove_logs(logs_dir: Path, task_id: str) -> None:
    for stream in STREAMS:
        log_path(logs_dir, task_id, stream).unlink(missing_ok=True)

"""Streaming multipart/form-data: file parts go straight to disk, never held in memory.

Used by ``@stream_request_body`` handlers: ``start_upload`` in ``prepare`` (the connection's
body limit raised to the upload cap), ``feed_or_refuse`` in ``data_received``, then read
``fields`` and ``files`` once the body is complete. An upload over the cap, declared or
chunked, answers 413 at once: the rest of the body is never read.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import tornado.web
from python_multipart.multipart import MultipartParser, parse_options_header

from vrungpu_gateway.api.bodylimit import declared_length, refuse
from vrungpu_gateway.errors import InvalidRequest, TooLarge

MAX_FIELD_BYTES = 64 * 1024
MAX_FILES = 100  # file parts of one upload (each one a file in data/uploads)
FORM_OVERHEAD = 2**20  # room for the other form fields around the file


@dataclass
class UploadedFile:
    field_name: str
    filename: str
    path: Path
    size: int = 0


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    name: str = ""
    filename: str | None = None
    buffer: bytearray = field(default_factory=bytearray)
    sink: BinaryIO | None = None
    upload: UploadedFile | None = None


class MultipartSink:
    def __init__(self, content_type: str, upload_dir: Path, *, max_file_bytes: int) -> None:
        ctype, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if ctype != b"multipart/form-data" or not boundary:
            raise InvalidRequest(
                "send the upload as multipart/form-data (curl -F file=@x.zip)", code="bad_upload"
            )
        self.upload_dir = upload_dir
        self.max_file_bytes = max_file_bytes
        self.fields: dict[str, str] = {}
        self.files: list[UploadedFile] = []
        self._part = _Part()
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._held = 0  # bytes of form fields and part headers, held in memory
        self._parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._begin,
                "on_header_field": self._hfield,
                "on_header_value": self._hvalue,
                "on_header_end": self._hend,
                "on_headers_finished": self._headers_done,
                "on_part_data": self._data,
                "on_part_end": self._end,
            },
        )

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except (InvalidRequest, TooLarge):
            raise
        except Exception as exc:
            raise InvalidRequest(f"malformed multipart body: {exc}", code="bad_upload") from exc

    def finish(self) -> None:
        self._parser.finalize()
        if self._part.sink is not None:
            raise InvalidRequest("the upload ended in the middle of a file", code="bad_upload")

    def discard(self) -> None:
        """Remove every file written so far (bad request, dropped connection)."""
        if self._part.sink is not None:
            self._part.sink.close()
            self._part.sink = None
        for upload in self.files + ([self._part.upload] if self._part.upload else []):
            upload.path.unlink(missing_ok=True)

    # -- parser callbacks ------------------------------------------------------------------
    def _begin(self) -> None:
        self._part = _Part()

    def _hold(self, size: int) -> None:
        self._held += size
        if self._held > FORM_OVERHEAD:
            raise TooLarge(
                f"form fields and part headers larger than {FORM_OVERHEAD // 2**20} MB in all"
            )

    def _hfield(self, data: bytes, start: int, end: int) -> None:
        self._hold(end - start)
        self._header_name += data[start:end]

    def _hvalue(self, data: bytes, start: int, end: int) -> None:
        self._hold(end - start)
        self._header_value += data[start:end]

    def _hend(self) -> None:
        name = self._header_name.decode("latin-1").lower()
        self._part.headers[name] = self._header_value.decode("utf-8", "replace")
        self._header_name.clear()
        self._header_value.clear()

    def _headers_done(self) -> None:
        # As bytes: a str is encoded as latin-1 by the parser, and names may be UTF-8 (RFC 7578)
        disposition = self._part.headers.get("content-disposition", "").encode("utf-8")
        _, params = parse_options_header(disposition)
        self._part.name = params.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in params:
            if len(self.files) >= MAX_FILES:
                raise TooLarge(f"an upload holds at most {MAX_FILES} files")
            self._part.filename = params[b"filename"].decode("utf-8", "replace")
            path = self.upload_dir / f"{uuid.uuid4().hex}.upload"
            self._part.upload = UploadedFile(self._part.name, self._part.filename, path)
            self._part.sink = open(path, "wb")  # noqa: SIM115 - closed in _end or discard

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if part.sink is not None and part.upload is not None:
            part.upload.size += end - start
            if part.upload.size > self.max_file_bytes:
                raise TooLarge(f"upload larger than {self.max_file_bytes // 2**20} MB")
            part.sink.write(data[start:end])
            return
        self._hold(end - start)
        part.buffer += data[start:end]
        if len(part.buffer) > MAX_FIELD_BYTES:
            raise TooLarge(f"form field {part.name!r} is larger than 64 KB")

    def _end(self) -> None:
        part = self._part
        if part.sink is not None and part.upload is not None:
            part.sink.close()
            part.sink = None
            self.files.append(part.upload)
            part.upload = None
        else:
            text = part.buffer.decode("utf-8", "replace")
            if "\x00" in text:  # names, paths, env and args cannot hold one
                raise InvalidRequest(f"form field {part.name[:100]!r} holds a NUL character")
            self.fields[part.name] = text


def start_upload(
    handler: tornado.web.RequestHandler, *, max_file_bytes: int, upload_dir: Path
) -> MultipartSink | None:
    """The sink of a streamed multipart upload, the connection's body limit raised to take
    it; None when the request is refused already (not multipart, or declared over the cap)."""
    try:
        sink = MultipartSink(
            handler.request.headers.get("Content-Type", ""),
            upload_dir,
            max_file_bytes=max_file_bytes,
        )
    except InvalidRequest as exc:
        refuse(handler, exc)
        return None
    limit = max_file_bytes + FORM_OVERHEAD
    if declared_length(handler.request.headers) > limit:
        refuse(handler, TooLarge(f"upload larger than {max_file_bytes // 2**20} MB"))
        return None
    handler.request.connection.set_max_body_size(limit)  # type: ignore[union-attr]
    return sink


def feed_or_refuse(handler: tornado.web.RequestHandler, sink: MultipartSink, chunk: bytes) -> None:
    """Feed one chunk; a bad or oversized body removes what was written and is answered now."""
    try:
        sink.feed(chunk)
    except (InvalidRequest, TooLarge) as exc:
        sink.discard()
        refuse(handler, exc)


def remove_quietly(path: Path) -> None:
    path.unlink(missing_ok=True)

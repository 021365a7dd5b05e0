"""`POST /run/project`: a .zip or .py upload, streamed to disk, unpacked into a workspace."""

from __future__ import annotations

import functools
from pathlib import Path

import tornado.web

from vrungpu_gateway.api.base import BaseHandler
from vrungpu_gateway.api.schemas import parse_task_spec
from vrungpu_gateway.api.uploads import (
    MultipartSink,
    UploadedFile,
    feed_or_refuse,
    remove_quietly,
    start_upload,
)
from vrungpu_gateway.engine.archive import ZipLimits
from vrungpu_gateway.engine.workspace import extract_project, place_script
from vrungpu_gateway.errors import InvalidRequest

UPLOAD_FIELDS = ("file", "model_file")


@tornado.web.stream_request_body
class RunProjectHandler(BaseHandler):
    sink: MultipartSink | None = None

    def prepare(self) -> None:
        super().prepare()
        self.sink = start_upload(
            self,
            max_file_bytes=self.gateway.config.max_upload_mb * 2**20,
            upload_dir=self.gateway.layout.uploads,
        )

    def data_received(self, chunk: bytes) -> None:
        if self.sink is not None:
            feed_or_refuse(self, self.sink, chunk)

    def on_connection_close(self) -> None:
        if self.sink is not None:
            self.sink.discard()

    async def post(self) -> None:
        assert self.sink is not None
        sink = self.sink
        try:
            sink.finish()
            upload = _the_file(sink.files)
            fields = sink.fields
            spec = parse_task_spec(
                fields, default_timeout_s=self.gateway.config.default_timeout_s, form=True
            )
            entry_point = fields.get("entry_point") or "main.py"
            prepare = functools.partial(
                _prepare,
                upload=upload,
                entry_point=entry_point,
                limits=ZipLimits.from_config(self.gateway.config),
            )
            record = await self.gateway.tasks.submit(spec=spec, prepare=prepare, user=self.user)
        finally:
            sink.discard()
            self.sink = None
        self.write_json(
            {
                "task_id": record.task_id,
                "status": "pending",
                "entry_point": record.entry_point,
                "message": f"Project uploaded; running {record.entry_point}",
            },
            status=202,
        )


def _the_file(files: list[UploadedFile]) -> UploadedFile:
    chosen = [f for f in files if f.field_name in UPLOAD_FIELDS] or files
    if not chosen:
        raise InvalidRequest(
            'no file in the upload: send it as the "file" field', code="missing_file"
        )
    return chosen[0]


def _prepare(workspace: Path, *, upload: UploadedFile, entry_point: str, limits: ZipLimits) -> str:
    name = upload.filename.lower()
    try:
        if name.endswith(".zip"):
            return extract_project(workspace, upload.path, entry_point, limits=limits)
        if name.endswith(".py"):
            return place_script(workspace, upload.path, upload.filename)
    finally:
        remove_quietly(upload.path)
    raise InvalidRequest(
        f"upload a .zip project or a .py file, not {upload.filename!r}", code="bad_upload"
    )


ROUTES = [
    (r"/run/project", RunProjectHandler),
]

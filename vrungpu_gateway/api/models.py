"""Model routes: the registry (list, register, show, update, delete, download), inference,
and the warm model workers."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import tornado.web

from vrungpu_gateway.api.base import BaseHandler
from vrungpu_gateway.api.bodylimit import body_too_large, declared_length, refuse
from vrungpu_gateway.api.jsonin import loads_strict
from vrungpu_gateway.api.schemas import parse_task_spec
from vrungpu_gateway.api.uploads import (
    MultipartSink,
    UploadedFile,
    feed_or_refuse,
    start_upload,
)
from vrungpu_gateway.engine.registry import ModelMeta
from vrungpu_gateway.errors import InvalidRequest
from vrungpu_gateway.records import ModelRecord, ModelStatus

MODEL_ID = r"(?P<model_id>[A-Za-z0-9_.-]{1,64})"
ARTIFACT_FIELDS = ("model_file", "file")
MAX_METRICS_BYTES = 64 * 1024
INFERENCE_TIMEOUT_S = 300.0
INFERENCE_OPTIONS = ("timeout", "gpu_id", "device", "priority", "name")
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


# -- parsing -------------------------------------------------------------------------------------
def _text(body: dict[str, Any], key: str, *, max_len: int, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        if required:
            raise InvalidRequest(f'"{key}" is required', code=f"missing_{key}")
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f'"{key}" must be a string, got {type(value).__name__}')
    value = value.strip()
    if len(value) > max_len:
        raise InvalidRequest(f'"{key}" is longer than {max_len} characters')
    if CONTROL_CHARS.search(value) and key != "description":
        raise InvalidRequest(f'"{key}" must not contain control characters')
    return value or None


def _metrics(value: Any, *, form: bool) -> dict[str, Any] | None:
    if value is None or value == "":
        return None
    if form and isinstance(value, str):
        try:
            value = loads_strict(value, what='"metrics"')
        except ValueError:
            raise InvalidRequest('"metrics" must be a JSON object') from None
    if not isinstance(value, dict):
        raise InvalidRequest('"metrics" must be an object, e.g. {"accuracy": 0.97}')
    try:
        encoded = json.dumps(value, allow_nan=False)
    except ValueError:
        raise InvalidRequest('"metrics" must not hold NaN or infinity') from None
    if len(encoded) > MAX_METRICS_BYTES:
        raise InvalidRequest('"metrics" is larger than 64 KB')
    return value


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in (
        "1",
        "true",
        "yes",
        "on",
        "0",
        "false",
        "no",
        "off",
        "",
    ):
        return value.strip().lower() in ("1", "true", "yes", "on")
    raise InvalidRequest(f'"{name}" must be true or false')


def parse_meta(body: dict[str, Any], *, form: bool) -> ModelMeta:
    return ModelMeta(
        model_type=_text(body, "model_type", max_len=100),
        framework=_text(body, "framework", max_len=100),
        description=_text(body, "description", max_len=10_000),
        metrics=_metrics(body.get("metrics"), form=form),
    )


def _split_files(files: list[UploadedFile]) -> tuple[UploadedFile, list[UploadedFile]]:
    artifacts = [f for f in files if f.field_name in ARTIFACT_FIELDS]
    if not artifacts:
        raise InvalidRequest(
            'no model file: send it as the "model_file" field (curl -F model_file=@model.pt)',
            code="missing_file",
        )
    if len(artifacts) > 1:
        raise InvalidRequest(
            'send one "model_file"; add companion files under another field '
            "(e.g. -F files=@handler.py)",
            code="bad_upload",
        )
    return artifacts[0], [f for f in files if f is not artifacts[0]]


# -- handlers ------------------------------------------------------------------------------------
class ModelListHandler(BaseHandler):
    async def get(self) -> None:
        name = self.get_query_argument("name", None) or None
        status = self.get_query_argument("status", None) or None
        if status is not None and status not in {s.value for s in ModelStatus}:
            raise InvalidRequest(f"status must be one of {', '.join(s.value for s in ModelStatus)}")
        limit = self.int_argument("limit", 100, minimum=1, maximum=1000)
        offset = self.int_argument("offset", 0)
        items, total = await self.gateway.models.list(
            name=name, status=status, limit=limit, offset=offset, user=self.user
        )
        self.write_json({"models": items, "total": total, "limit": limit, "offset": offset})


@tornado.web.stream_request_body
class ModelRegisterHandler(BaseHandler):
    """`POST /model/register`: a multipart upload (streamed to disk) or a JSON body that
    names a file or folder of a finished task's workspace."""

    sink: MultipartSink | None = None
    buffer: bytearray | None = None
    max_json = 0

    def prepare(self) -> None:
        super().prepare()
        ctype = self.request.headers.get("Content-Type", "")
        config = self.gateway.config
        if ctype.lower().startswith("multipart/"):
            self.sink = start_upload(
                self,
                max_file_bytes=config.max_upload_mb * 2**20,
                upload_dir=self.gateway.layout.uploads,
            )
            return
        self.max_json = int(config.max_body_mb * 2**20)
        if declared_length(self.request.headers) > self.max_json:
            refuse(self, body_too_large(self.max_json))
            return
        self.buffer = bytearray()

    def data_received(self, chunk: bytes) -> None:
        if self.sink is not None:
            feed_or_refuse(self, self.sink, chunk)
        elif self.buffer is not None:
            if len(self.buffer) + len(chunk) > self.max_json:
                self.buffer = None
                refuse(self, body_too_large(self.max_json))
                return
            self.buffer += chunk

    def on_connection_close(self) -> None:
        if self.sink is not None:
            self.sink.discard()

    async def post(self) -> None:
        record = await (self._from_upload() if self.sink is not None else self._from_task())
        self.write_json(self.gateway.models.present(record), status=201)

    async def _from_upload(self) -> ModelRecord:
        assert self.sink is not None
        sink = self.sink
        try:
            sink.finish()
            fields = sink.fields
            name = _text(fields, "name", max_len=200, required=True)
            artifact, extras = _split_files(sink.files)
            return await self.gateway.models.register_upload(
                name=name or "",
                meta=parse_meta(fields, form=True),
                upload=artifact.path,
                filename=artifact.filename,
                extras=[(f.path, f.filename) for f in extras],
                unpack=_flag(fields.get("unpack", ""), "unpack"),
                task_id=_text(fields, "task_id", max_len=64),
                user=self.user,
            )
        finally:
            sink.discard()
            self.sink = None

    async def _from_task(self) -> ModelRecord:
        self.request.body = bytes(self.buffer or b"")
        body = self.json_body()
        name = _text(body, "name", max_len=200, required=True)
        task_id = _text(body, "task_id", max_len=64)
        if task_id is None:
            raise InvalidRequest(
                'register with "task_id" (and "path") as JSON, or upload the '
                "file as multipart/form-data (model_file)",
                code="missing_file",
            )
        return await self.gateway.models.register_from_task(
            name=name or "",
            meta=parse_meta(body, form=False),
            task_id=task_id,
            path=_text(body, "path", max_len=1000),
            user=self.user,
        )


class ModelHandler(BaseHandler):
    async def get(self, model_id: str) -> None:
        self.write_json(await self.gateway.models.describe(model_id, user=self.user))

    async def patch(self, model_id: str) -> None:
        body = self.json_body()
        changes: dict[str, Any] = {}
        if "status" in body:
            status = body["status"]
            if status not in {s.value for s in ModelStatus}:
                raise InvalidRequest('status must be "ready" or "archived"')
            changes["status"] = ModelStatus(status)
        if "description" in body:
            changes["description"] = _text(body, "description", max_len=10_000)
        if "metrics" in body:
            changes["metrics"] = _metrics(body["metrics"], form=False)
        if not changes:
            raise InvalidRequest("nothing to change: give status, description or metrics")
        record = await self.gateway.models.update(
            model_id=model_id, changes=changes, user=self.user
        )
        self.write_json(await self.gateway.models.describe(record.model_id))

    async def delete(self, model_id: str) -> None:
        unloaded = await self.gateway.models.delete(model_id=model_id, user=self.user)
        self.write_json({"model_id": model_id, "deleted": True, "unloaded_workers": unloaded})


class ModelDownloadHandler(BaseHandler):
    """The artifact (a folder as a zip); `?file=handler.py` fetches one stored file."""

    async def get(self, model_id: str) -> None:
        file = self.get_query_argument("file", None) or None
        download = await self.gateway.models.download(model_id=model_id, file=file, user=self.user)
        try:
            if file is None:
                record = await self.gateway.models.get(model_id)
                self.set_header("X-Content-SHA256", record.sha256)
            await self.send_file(download.path, download.filename)
        finally:
            if download.temporary:
                await asyncio.to_thread(download.path.unlink, missing_ok=True)


class ModelInferenceHandler(BaseHandler):
    """`POST /model/{id}/inference {input_data, timeout?, gpu_id?, device?, sync?}`."""

    async def post(self, model_id: str) -> None:
        body = self.json_body()
        if body.get("input_data") is None:
            raise InvalidRequest(
                '"input_data" is required: the JSON the model\'s predict() receives',
                code="missing_input",
            )
        sync = _flag(body.get("sync", False), "sync")
        default_s = min(INFERENCE_TIMEOUT_S, self.gateway.config.default_timeout_s)
        options = {k: body[k] for k in INFERENCE_OPTIONS if k in body}
        spec = parse_task_spec(options, default_timeout_s=default_s)
        record = await self.gateway.models.infer(
            model_id=model_id, input_data=body["input_data"], spec=spec, user=self.user
        )
        if not sync:
            self.write_json(
                {
                    "task_id": record.task_id,
                    "status": "pending",
                    "model_id": model_id,
                    "message": f"Inference task started. Model: {record.model_name}",
                },
                status=202,
            )
            return
        await self.gateway.tasks.wait(task_id=record.task_id)
        self.write_json(await self.gateway.tasks.describe(record.task_id))


class ModelWorkersHandler(BaseHandler):
    """`GET /models/workers`: the warm model workers, their pids, slots and use."""

    def get(self) -> None:
        self.write_json(self.gateway.workers.describe())


ROUTES = [
    (r"/models", ModelListHandler),
    (r"/models/workers", ModelWorkersHandler),
    (r"/model/register", ModelRegisterHandler),
    (rf"/model/{MODEL_ID}", ModelHandler),
    (rf"/model/{MODEL_ID}/download", ModelDownloadHandler),
    (rf"/model/{MODEL_ID}/inference", ModelInferenceHandler),
]

"""Task routes: run code, inspect, list, cancel, delete, progress, logs and files."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from vrungpu_gateway.api.base import BaseHandler
from vrungpu_gateway.api.schemas import parse_code, parse_task_spec
from vrungpu_gateway.engine import logs as logfiles
from vrungpu_gateway.engine.paths import open_inside
from vrungpu_gateway.engine.workspace import list_files, write_code
from vrungpu_gateway.errors import InvalidRequest, NotFound
from vrungpu_gateway.protocol import STREAMS, Device, TaskStatus, TaskType

TASK_ID = r"(?P<task_id>[A-Za-z0-9_.-]{1,64})"


class RunHandler(BaseHandler):
    """`POST /run/async` and `POST /run/sync`: run a piece of Python source."""

    wait = False

    async def post(self) -> None:
        body = self.json_body()
        code = parse_code(body)
        self.gateway.tasks.limits.check_code(code)  # before a byte of it is written
        spec = parse_task_spec(body, default_timeout_s=self.gateway.config.default_timeout_s)
        record = await self.gateway.tasks.submit(
            spec=spec, prepare=functools.partial(write_code, code=code), user=self.user
        )
        if not self.wait:
            self.write_json(
                {
                    "task_id": record.task_id,
                    "status": TaskStatus.PENDING.value,
                    "message": f"Task submitted ({record.device})",
                },
                status=202,
            )
            return
        await self.gateway.tasks.wait(task_id=record.task_id)
        self.write_json(await self.gateway.tasks.describe(record.task_id))


class RunSyncHandler(RunHandler):
    wait = True


class TaskHandler(BaseHandler):
    async def get(self, task_id: str) -> None:
        self.write_json(await self.gateway.tasks.describe(task_id, user=self.user))

    async def delete(self, task_id: str) -> None:
        await self.gateway.tasks.delete(task_id=task_id, user=self.user)
        self.write_json({"task_id": task_id, "deleted": True})


class TaskListHandler(BaseHandler):
    async def get(self) -> None:
        status = self._choice("status", {s.value for s in TaskStatus})
        task_type = self._choice("task_type", {t.value for t in TaskType})
        device = self._choice("device", {Device.GPU.value, Device.CPU.value})
        limit = self.int_argument("limit", 50, minimum=1, maximum=1000)
        offset = self.int_argument("offset", 0)
        items, total = await self.gateway.tasks.list_tasks(
            status=status,
            task_type=task_type,
            device=device,
            limit=limit,
            offset=offset,
            user=self.user,
        )
        # The seed's bare list; the total and the neighbouring pages go in headers.
        self.set_header("X-Total-Count", str(total))
        links = page_links(self.request.uri or "", total=total, limit=limit, offset=offset)
        if links:
            self.set_header("Link", links)
        self.write_json(items)

    def _choice(self, name: str, allowed: set[str]) -> str | None:
        value = self.get_query_argument(name, None)
        if value in (None, ""):
            return None
        if value not in allowed:
            raise InvalidRequest(f"{name} must be one of {', '.join(sorted(allowed))}")
        return value


def page_links(url: str, *, total: int, limit: int, offset: int) -> str:
    """RFC 8288 ``Link`` header with the next/prev/first/last pages of a listing: relative
    links (no Host echoed back), without the ``token`` a request may carry in its query."""
    parts = urlsplit(url)._replace(scheme="", netloc="")
    query = {k: v for k, v in parse_qsl(parts.query) if k != "token"}
    last = max(0, (total - 1) // limit * limit)
    pages = {"first": 0, "last": last}
    if offset + limit < total:
        pages["next"] = offset + limit
    if offset > 0:
        pages["prev"] = max(0, offset - limit)
    links = []
    for rel, start in pages.items():
        target = urlunsplit(
            parts._replace(query=urlencode({**query, "limit": limit, "offset": start}))
        )
        links.append(f'<{target}>; rel="{rel}"')
    return ", ".join(links) if total else ""


class TaskCancelHandler(BaseHandler):
    async def post(self, task_id: str) -> None:
        record = await self.gateway.tasks.cancel(task_id=task_id, user=self.user)
        self.write_json(
            {"task_id": task_id, "status": record.status.value, "message": record.error}
        )


class TaskProgressHandler(BaseHandler):
    async def put(self, task_id: str) -> None:
        body = self.json_body()
        progress = body.get("progress")
        if isinstance(progress, bool) or not isinstance(progress, int | float):
            raise InvalidRequest("progress must be a number between 0 and 100")
        message = body.get("message")
        if message is not None and not isinstance(message, str):
            raise InvalidRequest("message must be a string")
        record = await self.gateway.tasks.set_progress(
            task_id=task_id, progress=float(progress), message=message, user=self.user
        )
        self.write_json(
            {
                "task_id": task_id,
                "progress": record.progress,
                "progress_message": record.progress_message,
            }
        )


class TaskLogsHandler(BaseHandler):
    """Whole lines by byte offset or last lines; the offsets are the ones WebSocket
    subscriptions use, so ``next_offset`` can be handed to a ``subscribe`` and back."""

    async def get(self, task_id: str) -> None:
        record = await self.gateway.tasks.get(task_id, user=self.user)
        stream = self.get_query_argument("stream", "all")
        if stream not in (*STREAMS, "all"):
            raise InvalidRequest("stream must be stdout, stderr or all")
        offset = self.optional_int_argument("offset")
        tail = self.optional_int_argument("tail")
        if offset is not None and tail is not None:
            raise InvalidRequest("give offset or tail, not both")
        if offset is not None and stream == "all":
            raise InvalidRequest("offset needs stream=stdout or stream=stderr")
        streams = STREAMS if stream == "all" else (stream,)
        read = functools.partial(
            _read, self.gateway.layout.logs, task_id, final=record.status.is_terminal()
        )
        parts = {s: await asyncio.to_thread(read, s, offset, tail) for s in streams}
        body: dict[str, Any] = {"task_id": task_id, "stream": stream}
        if stream == "all":
            body["content"] = "".join(p["content"] for p in parts.values())
            body["streams"] = parts
        else:
            body.update(parts[stream])
        self.write_json(body)


MAX_LOG_READ = 8 * 1024 * 1024


def _read(
    logs_dir: Any, task_id: str, stream: str, offset: int | None, tail: int | None, *, final: bool
) -> dict[str, Any]:
    if tail is not None:
        offset = logfiles.tail_offset(
            logs_dir, task_id, stream, tail, final=final, max_bytes=MAX_LOG_READ
        )
    part = logfiles.read_lines(
        logs_dir, task_id, stream, offset=offset or 0, limit_bytes=MAX_LOG_READ, final=final
    )
    return dataclasses.asdict(part)


class TaskFilesHandler(BaseHandler):
    """`GET /task/{id}/files` lists the workspace; `/files/{path}` downloads one file."""

    async def get(self, task_id: str, path: str | None = None) -> None:
        await self.gateway.tasks.get(task_id, user=self.user)
        workspace = self.gateway.layout.workspace(task_id)
        if not path:
            entries = await asyncio.to_thread(list_files, workspace)
            self.write_json(
                {
                    "task_id": task_id,
                    "files": [
                        {"path": e.path, "size": e.size, "modified": e.modified} for e in entries
                    ],
                }
            )
            return
        try:  # the job's uid may change its workspace while we read: nothing outside is opened
            fd = await asyncio.to_thread(open_inside, workspace, path, what="file path")
        except FileNotFoundError:
            raise NotFound(
                f"no file {path!r} in task {task_id}'s workspace", code="file_not_found"
            ) from None
        await self.send_fd(fd, PurePosixPath(path).name)


ROUTES = [
    (r"/run/sync", RunSyncHandler),
    (r"/run/async", RunHandler),
    (r"/tasks", TaskListHandler),
    (rf"/task/{TASK_ID}", TaskHandler),
    (rf"/task/{TASK_ID}/cancel", TaskCancelHandler),
    (rf"/task/{TASK_ID}/progress", TaskProgressHandler),
    (rf"/task/{TASK_ID}/logs", TaskLogsHandler),
    (rf"/task/{TASK_ID}/files", TaskFilesHandler),
    (rf"/task/{TASK_ID}/files/(?P<path>.+)", TaskFilesHandler),
]

"""VrunGPUClient: the Python client of the gateway's REST API, usable without IPython.

Keeps the seed client's methods (`check_health`, `get_gpu_info`, `get_gpu_pool`, `run_sync`,
`run_async`, `get_task_status`, `wait_for_task`, `run_file`, `run_parallel`, `list_tasks`)
and adds `run_project`, `cancel`, `logs`, files and models. Every error is a `VrunGPUError`
carrying the HTTP status, the gateway's one-line detail and its code.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from vrungpu_gateway.protocol import TaskStatus
from vrungpu_magic.archive import zip_project
from vrungpu_magic.client_models import ModelsClientMixin
from vrungpu_magic.config import load_connection

ProgressCallback = Callable[[int, int], None]  # (bytes sent, total bytes)


class VrunGPUError(Exception):
    """A failed call: ``status`` (HTTP, 0 when unreachable), ``detail`` and ``code``."""

    def __init__(self, status: int, detail: str, code: str = "error") -> None:
        super().__init__(f"{detail} (HTTP {status})" if status else detail)
        self.status = status
        self.detail = detail
        self.code = code


def _field_part(boundary: str, name: str, value: str) -> bytes:
    disposition = f'Content-Disposition: form-data; name="{name}"'
    return f"--{boundary}\r\n{disposition}\r\n\r\n{value}\r\n".encode()


def _field_part(boundary: str, name: str, value: str) -> bytes:
    disposition = f'Content-Disposition: form-data; name="{name}"'
    return f"--{boundary}\r\n{disposition}\r\n\r\n{value}\r\n".encode()


class _MultipartBody(io.RawIOBase):
    """A streamed multipart/form-data body: one file plus fields, with upload progress.

    A readable file object with a length, so requests sends a Content-Length and streams it.
    """

    def __init__(
        self,
        fields: dict[str, str],
        file_field: str,
        path: Path,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        super().__init__()
        self.boundary = uuid.uuid4().hex
        head = b"".join(_field_part(self.boundary, k, v) for k, v in fields.items())
        head += (
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{file_field}"; '
            f'filename="{path.name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        self._parts = [
            io.BytesIO(head),
            open(path, "rb"),  # noqa: SIM115 - closed in close()
            io.BytesIO(f"\r\n--{self.boundary}--\r\n".encode()),
        ]
        self.length = len(head) + path.stat().st_size + self._parts[2].getbuffer().nbytes
        self._sent = 0
        self._on_progress = on_progress

    def __len__(self) -> int:
        return self.length

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        want = self.length if size is None or size < 0 else size
        out = b""
        while self._parts and len(out) < want:
            chunk = self._parts[0].read(want - len(out))
            if not chunk:
                self._parts.pop(0).close()
                continue
            out += chunk
        self._sent += len(out)
        if out and self._on_progress:
            self._on_progress(self._sent, self.length)
        return out

    def close(self) -> None:
        for part in self._parts:
            part.close()
        super().close()


def _form(options: dict[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in options.items():
        if value is None:
            continue
        out[key] = json.dumps(value) if isinstance(value, list | dict | bool) else str(value)
    return out


class VrunGPUClient(ModelsClientMixin):
    """A client for one gateway. ``url``/``token`` default to VRUNGPU_URL/VRUNGPU_TOKEN or the
    user's config file (see `vrungpu_magic.config`)."""

    def __init__(
        self, url: str | None = None, token: str | None = None, *, timeout: float = 30.0
    ) -> None:
        conn = load_connection(url, token)
        self.url, self.token, self.timeout = conn.url, conn.token, timeout
        self.session = requests.Session()
        if self.token:
            self.session.headers["Authorization"] = f"token {self.token}"

    def __repr__(self) -> str:
        return f"VrunGPUClient({self.url!r})"

    # -- plumbing ----------------------------------------------------------------------------
    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        try:
            res = self.session.request(method, self.url + path, **kwargs)
        except requests.ConnectionError as exc:
            raise VrunGPUError(
                0, f"cannot reach the gateway at {self.url}: {type(exc).__name__}", "unreachable"
            ) from None
        except requests.Timeout:
            raise VrunGPUError(
                0, f"the gateway at {self.url} did not answer in time", "timeout"
            ) from None
        if res.status_code >= 400:
            try:
                body = res.json()
                detail, code = body.get("detail", res.reason), body.get("code", "error")
            except ValueError:
                detail, code = res.text.strip()[:200] or res.reason, "error"
            raise VrunGPUError(res.status_code, detail, code)
        return res

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._send(method, path, **kwargs).json()

    def _stream_download(self, path: str, dest: str | os.PathLike[str]) -> Path:
        dest = Path(dest)
        with self._send("GET", path, stream=True) as res:
            if dest.is_dir():
                name = res.headers.get("Content-Disposition", "").partition("filename=")[2]
                dest = dest / (name.strip('"') or Path(path).name)
            tmp = dest.with_name(dest.name + ".part")
            with open(tmp, "wb") as fh:
                for chunk in res.iter_content(1024 * 1024):
                    fh.write(chunk)
            tmp.replace(dest)
        return dest

    def _upload(
        self,
        path: Path,
        fields: dict[str, Any],
        *,
        file_field: str = "file",
        route: str = "/run/project",
        on_progress: ProgressCallback | None = None,
    ) -> Any:
        with _MultipartBody(_form(fields), file_field, path, on_progress) as body:
            headers = {"Content-Type": body.content_type}
            return self._request(
                "POST", route, data=body, headers=headers, timeout=max(self.timeout, 600)
            )

    # -- service -------------------------------------------------------------------------------
    def check_health(self) -> dict[str, Any]:
        """The gateway's status (`GET /`): version, GPUs, tasks, storage."""
        return self._request("GET", "/")

    def get_gpu_info(self) -> dict[str, Any]:
        return self._request("GET", "/gpu")

    def get_gpu_pool(self) -> dict[str, Any]:
        return self._request("GET", "/gpu/pool")

    def stats(self) -> dict[str, Any]:
        return self._request("GET", "/stats")

    # -- running -------------------------------------------------------------------------------
    def run_sync(
        self, code: str, timeout: float | None = None, gpu_id: int | None = None, **options: Any
    ) -> dict[str, Any]:
        """Run ``code`` and wait for the end; returns the task (stdout/stderr tails inside)."""
        body = {"code": code, "timeout": timeout, "gpu_id": gpu_id, **options}
        body = {k: v for k, v in body.items() if v is not None}
        wait_s = (timeout or 3600) + 120
        return self._request("POST", "/run/sync", json=body, timeout=wait_s)

    def run_async(
        self, code: str, timeout: float | None = None, gpu_id: int | None = None, **options: Any
    ) -> str:
        """Queue ``code``; returns its task id at once."""
        body = {"code": code, "timeout": timeout, "gpu_id": gpu_id, **options}
        body = {k: v for k, v in body.items() if v is not None}
        return self._request("POST", "/run/async", json=body)["task_id"]

    def run_file(
        self,
        path: str | os.PathLike[str],
        timeout: float | None = None,
        gpu_id: int | None = None,
        **options: Any,
    ) -> str:
        """Upload one .py (or .zip) file and run it; returns the task id."""
        path = Path(path)
        fields = {"timeout": timeout, "gpu_id": gpu_id, **options}
        if path.suffix == ".py":
            fields.setdefault("entry_point", path.name)
        return self._upload(path, fields)["task_id"]

    def run_project(
        self,
        folder_or_zip: str | os.PathLike[str],
        entry_point: str = "main.py",
        *,
        on_progress: ProgressCallback | None = None,
        ignore: list[str] | None = None,
        **options: Any,
    ) -> str:
        """Run a project folder (zipped on the fly, ignores applied) or a .zip; returns the id."""
        source = Path(folder_or_zip)
        fields = {"entry_point": entry_point, **options}
        if source.is_file():
            return self._upload(source, fields, on_progress=on_progress)["task_id"]
        with tempfile.TemporaryDirectory(prefix="vrungpu-") as tmp:
            archive = zip_project(source, Path(tmp) / f"{source.resolve().name}.zip", ignore)
            return self._upload(archive, fields, on_progress=on_progress)["task_id"]

    def run_parallel(
        self, codes: list[str], timeout: float | None = None, *, wait: bool = True, **options: Any
    ) -> list[Any]:
        """Submit several pieces of code at once (each gets its own GPU when free)."""
        ids = [self.run_async(code, timeout=timeout, **options) for code in codes]
        if not wait:
            return ids
        return [self.wait_for_task(task_id) for task_id in ids]

    # -- tasks -----------------------------------------------------------------------------------
    def get_task_status(self, task_id: str) -> dict[str, Any]:
        return self._request("GET", f"/task/{task_id}")

    get_task = get_task_status

    def wait_for_task(
        self, task_id: str, timeout: float | None = None, poll_interval: float = 1.0
    ) -> dict[str, Any]:
        """Wait until the task ends (completed, failed or cancelled) and return it.

        Raises ``TimeoutError`` after ``timeout`` seconds (None waits as long as it takes).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            task = self.get_task_status(task_id)
            if TaskStatus(task["status"]).is_terminal():
                return task
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"task {task_id} still {task['status']} after {timeout}s")
            time.sleep(
                poll_interval
                if deadline is None
                else max(0.0, min(poll_interval, deadline - time.monotonic()))
            )

    def list_tasks(
        self, status: str | None = None, limit: int = 50, offset: int = 0, **filters: Any
    ) -> list[dict[str, Any]]:
        params = {"status": status, "limit": limit, "offset": offset, **filters}
        params = {k: v for k, v in params.items() if v is not None}
        return self._request("GET", "/tasks", params=params)["tasks"]

    def cancel(self, task_id: str) -> dict[str, Any]:
        return self._request("POST", f"/task/{task_id}/cancel")

    def delete_task(self, task_id: str) -> dict[str, Any]:
        return self._request("DELETE", f"/task/{task_id}")

    def set_progress(self, task_id: str, progress: float, message: str | None = None) -> Any:
        return self._request(
            "PUT", f"/task/{task_id}/progress", json={"progress": progress, "message": message}
        )

    def logs(
        self,
        task_id: str,
        stream: str = "all",
        *,
        tail: int | None = None,
        offset: int | None = None,
    ) -> str:
        """The task's output as text (both streams by default; ``tail`` last lines)."""
        params = {"stream": stream, "tail": tail, "offset": offset}
        params = {k: v for k, v in params.items() if v is not None}
        return self._request("GET", f"/task/{task_id}/logs", params=params)["content"]

    def files(self, task_id: str) -> list[dict[str, Any]]:
        return self._request("GET", f"/task/{task_id}/files")["files"]

    def download(self, task_id: str, path: str, dest: str | os.PathLike[str] = ".") -> Path:
        """Download one workspace file (e.g. ``model.pt``) to ``dest`` (file or folder)."""
        return self._stream_download(f"/task/{task_id}/files/{path}", dest)

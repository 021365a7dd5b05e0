"""VrunGPUClient: the Python client of the gateway's REST API, usable without IPython.

Keeps the seed client's methods (`check_health`, `get_gpu_info`, `get_gpu_pool`, `run_sync`,
`run_async`, `get_task_status`, `wait_for_task`, `run_file`, `run_parallel`, `list_tasks`)
and adds `run_project`, `cancel`, `logs`, files, models and remote kernels
(`vrungpu_magic.kernels`). Every error is a `VrunGPUError` carrying the HTTP status, the
gateway's one-line detail and its code.
"""

from __future__ import annotations

import io
import json
import os
import ssl
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import requests
import websocket

from vrungpu_gateway.protocol import TaskStatus
from vrungpu_magic.archive import zip_project
from vrungpu_magic.client_models import ModelsClientMixin
from vrungpu_magic.config import load_connection
from vrungpu_magic.kernels import KernelsClientMixin
from vrungpu_magic.urls import seg

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
        tail = f"\r\n--{self.boundary}--\r\n".encode()
        self._parts: list[BinaryIO] = [
            io.BytesIO(head),
            open(path, "rb"),  # noqa: SIM115 - closed in close()
            io.BytesIO(tail),
        ]
        self.length = len(head) + path.stat().st_size + len(tail)
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


class VrunGPUClient(ModelsClientMixin, KernelsClientMixin):
    """A client for one gateway. ``url``/``token`` default to VRUNGPU_URL/VRUNGPU_TOKEN or the
    user's config file (see `vrungpu_magic.config`). An ``https://`` URL is checked against
    the system's CA certificates, or ``ca_bundle`` (a PEM file; VRUNGPU_CA_BUNDLE)."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        ca_bundle: str | None = None,
    ) -> None:
        conn = load_connection(url, token, ca_bundle)
        self.url, self.token, self.timeout = conn.url, conn.token, timeout
        self.ca_bundle = conn.ca_bundle
        self.session = requests.Session()
        if self.token:
            self.session.headers["Authorization"] = f"token {self.token}"

    def clone(self) -> VrunGPUClient:
        """A client of its own (its own session) for the same gateway, e.g. for a thread."""
        return VrunGPUClient(self.url, self.token, timeout=self.timeout, ca_bundle=self.ca_bundle)

    @property
    def ws_options(self) -> dict[str, Any]:
        """What ``websocket.create_connection`` needs besides the URL: the CA bundle."""
        return {"sslopt": {"ca_certs": self.ca_bundle}} if self.ca_bundle else {}

    @property
    def ws_url(self) -> str:
        """The gateway's URL for a WebSocket: ``ws://`` for http, ``wss://`` for https."""
        return "ws" + self.url.removeprefix("http")

    def __repr__(self) -> str:
        return f"VrunGPUClient({self.url!r})"

    # -- plumbing ----------------------------------------------------------------------------
    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        # Per request: a Session's own ``verify`` loses to REQUESTS_CA_BUNDLE (requests#3829).
        kwargs.setdefault("verify", self.ca_bundle or True)
        try:
            res = self.session.request(method, self.url + path, **kwargs)
        except requests.exceptions.SSLError as exc:
            raise VrunGPUError(0, _tls_detail(self.url, exc), "tls") from None
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
        return self._request("GET", f"/task/{seg(task_id)}")

    get_task = get_task_status

    def wait_for_task(
        self,
        task_id: str,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        on_line: Callable[[str, str], None] | None = None,
    ) -> dict[str, Any]:
        """Wait until the task ends (completed, failed or cancelled) and return it.

        With ``on_line(stream, line)``, every output line is passed to it as it comes (over the
        WebSocket, see `stream`) instead of polling. Raises ``TimeoutError`` after ``timeout``
        seconds (None waits as long as it takes).
        """
        if on_line is not None:
            for event in self.stream(task_id, timeout=timeout):
                if event["type"] == "output":
                    for line in event["lines"]:
                        on_line(event["stream"], line)
            return self.get_task_status(task_id)
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

    def stream(
        self,
        task_id: str,
        offset: int = 0,
        *,
        stderr_offset: int = 0,
        timeout: float | None = None,
    ) -> Iterator[dict[str, Any]]:
        """A task's live events over the WebSocket, from byte offsets of its stdout/stderr logs.

        Yields ``{"type": "task", "task": {...}}`` at the start and on every update, and
        ``{"type": "output", "stream": "stdout"|"stderr", "lines": [...], "offset": N}``
        (``offset``: where to resume after these lines). The last event is the task in its
        terminal state, after all its output. A dropped connection is re-opened with backoff and the
        stream resumes from the last offsets (nothing doubled or lost). Raises
        ``TimeoutError`` after ``timeout`` seconds, `VrunGPUError` for an unknown task or a
        refused token, and ``VrunGPUError(0, ..., "unreachable")`` when the gateway stays
        unreachable for ``STREAM_GIVE_UP_S``.
        """
        return _TaskStream(self, task_id, offset, stderr_offset, timeout).events()

    def list_tasks(
        self, status: str | None = None, limit: int = 50, offset: int = 0, **filters: Any
    ) -> list[dict[str, Any]]:
        params = {"status": status, "limit": limit, "offset": offset, **filters}
        params = {k: v for k, v in params.items() if v is not None}
        return self._request("GET", "/tasks", params=params)  # the seed's bare list

    def cancel(self, task_id: str) -> dict[str, Any]:
        return self._request("POST", f"/task/{seg(task_id)}/cancel")

    def delete_task(self, task_id: str) -> dict[str, Any]:
        return self._request("DELETE", f"/task/{seg(task_id)}")

    def set_progress(self, task_id: str, progress: float, message: str | None = None) -> Any:
        return self._request(
            "PUT", f"/task/{seg(task_id)}/progress", json={"progress": progress, "message": message}
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
        return self._request("GET", f"/task/{seg(task_id)}/logs", params=params)["content"]

    def log_slices(
        self, task_id: str, stream: str = "all", *, tail: int | None = None
    ) -> dict[str, dict[str, Any]]:
        """Each stream's part of the log: ``content``, ``next_offset`` (where `stream` goes on
        from), ``partial`` (a running task's unfinished last line); ``tail``: last lines."""
        params = {"stream": stream, "tail": tail}
        params = {k: v for k, v in params.items() if v is not None}
        body = self._request("GET", f"/task/{seg(task_id)}/logs", params=params)
        return body["streams"] if stream == "all" else {stream: body}

    def files(self, task_id: str) -> list[dict[str, Any]]:
        return self._request("GET", f"/task/{seg(task_id)}/files")["files"]

    def download(self, task_id: str, path: str, dest: str | os.PathLike[str] = ".") -> Path:
        """Download one workspace file (e.g. ``model.pt``) to ``dest`` (file or folder)."""
        return self._stream_download(f"/task/{seg(task_id)}/files/{path}", dest)


STREAM_BACKOFF_S = (0.25, 0.5, 1.0, 2.0, 4.0)  # waits between reconnects, the last repeated
STREAM_GIVE_UP_S = 60.0  # without any connection this long, stream() raises "unreachable"
STREAM_IDLE_S = 60.0  # nothing at all (not even a ping) for this long: the connection is dead


class _Dropped(Exception):
    """The WebSocket closed or failed: reconnect and resume."""


class _TaskStream:
    """The state of one `VrunGPUClient.stream` call: offsets to resume from, backoff."""

    def __init__(
        self, client: VrunGPUClient, task_id: str, stdout: int, stderr: int, timeout: float | None
    ) -> None:
        self.client, self.task_id, self.timeout = client, task_id, timeout
        self.offsets = {"stdout": stdout, "stderr": stderr}
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.task: dict[str, Any] | None = None
        self.lost_since: float | None = None
        self.retries = 0

    def events(self) -> Iterator[dict[str, Any]]:
        while True:
            try:
                ws = self._connect()
                try:
                    yield from self._follow(ws)
                    return
                finally:
                    ws.close()
            except _Dropped as exc:
                self._backoff(str(exc))

    def _backoff(self, why: str) -> None:
        now = time.monotonic()
        self.lost_since = self.lost_since or now
        if now - self.lost_since > STREAM_GIVE_UP_S:
            raise VrunGPUError(
                0, f"lost the gateway at {self.client.url} while streaming: {why}", "unreachable"
            )
        wait_s = STREAM_BACKOFF_S[min(self.retries, len(STREAM_BACKOFF_S) - 1)]
        self.retries += 1
        remaining = self._remaining()
        time.sleep(wait_s if remaining is None else max(0.0, min(wait_s, remaining)))
        self._check_deadline()

    def _remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def _check_deadline(self) -> None:
        remaining = self._remaining()
        if remaining is not None and remaining <= 0:
            status = self.task["status"] if self.task else "unknown"
            raise TimeoutError(f"task {self.task_id} still {status} after {self.timeout}s")

    def _connect(self) -> websocket.WebSocket:
        url = self.client.ws_url + "/ws"
        header = [f"Authorization: token {self.client.token}"] if self.client.token else []
        try:
            return websocket.create_connection(
                url,
                header=header,
                timeout=self.client.timeout,
                suppress_origin=True,
                **self.client.ws_options,
            )
        except websocket.WebSocketBadStatusException as exc:
            if exc.status_code in (401, 403, 404):
                raise _status_error(exc) from None
            raise _Dropped(f"HTTP {exc.status_code}") from None
        except ssl.SSLCertVerificationError as exc:  # no retry makes it trusted
            raise VrunGPUError(0, _tls_detail(self.client.url, exc), "tls") from None
        except (OSError, websocket.WebSocketException) as exc:
            raise _Dropped(f"{type(exc).__name__}: {exc}") from None

    def _subscribe(self, ws: websocket.WebSocket) -> None:
        message = {"type": "subscribe", "task_id": self.task_id, "offsets": self.offsets}
        try:
            ws.send(json.dumps(message))
        except (OSError, websocket.WebSocketException) as exc:
            raise _Dropped(str(exc)) from None

    def _follow(self, ws: websocket.WebSocket) -> Iterator[dict[str, Any]]:
        """Events of one connection; returns once the task ended and its output was read."""
        self._subscribe(ws)
        acked = False  # messages about the task before our subscription's ack are stale
        while True:
            msg = self._receive(ws)
            kind = msg.get("type")
            task = msg.get("task") or {}
            if msg.get("task_id", task.get("task_id")) != self.task_id:
                continue
            if kind == "subscribed":
                acked, self.lost_since, self.retries = True, None, 0
                # the first event; after a reconnect only news (a final state comes last)
                if self.task is None or not TaskStatus(msg["task"]["status"]).is_terminal():
                    yield from self._task_event(msg["task"], always=self.task is None)
            elif kind == "error":
                code = msg.get("code", "error")
                raise VrunGPUError(404 if code == "task_not_found" else 400, msg["detail"], code)
            elif kind == "task_deleted":
                raise VrunGPUError(404, f"task {self.task_id} was deleted", "task_not_found")
            elif not acked:
                continue
            elif kind == "task_output" and "lines" in msg:
                self.offsets[msg["stream"]] = msg["offset"]
                stream, lines, offset = msg["stream"], msg["lines"], msg["offset"]
                yield {"type": "output", "stream": stream, "lines": lines, "offset": offset}
            elif kind == "gap":  # we fell behind: read on from the log file
                self.offsets[msg["stream"]] = msg["offset"]
                self.offsets.update(msg.get("offsets") or {})
                acked = False
                self._subscribe(ws)
            elif kind == "task_update":
                final = TaskStatus(task["status"]).is_terminal()
                yield from self._task_event(task, always=final)  # the last event
                if final:
                    return

    def _task_event(self, task: dict[str, Any], *, always: bool) -> Iterator[dict[str, Any]]:
        if always or task != self.task:
            self.task = task
            yield {"type": "task", "task": task}

    def _receive(self, ws: websocket.WebSocket) -> dict[str, Any]:
        while True:
            self._check_deadline()
            remaining = self._remaining()
            ws.settimeout(STREAM_IDLE_S if remaining is None else min(remaining, STREAM_IDLE_S))
            try:
                raw = ws.recv()
            except websocket.WebSocketTimeoutException:
                if remaining is not None and remaining <= STREAM_IDLE_S:
                    continue  # our own deadline: _check_deadline raises
                raise _Dropped(f"nothing received for {STREAM_IDLE_S:g}s") from None
            except (OSError, websocket.WebSocketException) as exc:
                raise _Dropped(f"{type(exc).__name__}: {exc}") from None
            if not raw:
                raise _Dropped("the gateway closed the connection")
            return json.loads(raw)


def _status_error(exc: websocket.WebSocketBadStatusException) -> VrunGPUError:
    try:
        body = json.loads(exc.resp_body or b"{}")
        detail, code = body.get("detail", str(exc)), body.get("code", "error")
    except ValueError:
        detail, code = str(exc), "error"
    return VrunGPUError(exc.status_code, detail, code)


def _tls_detail(url: str, exc: BaseException) -> str:
    """One line for a failed TLS handshake, with the likely fix."""
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            f"the certificate of {url} is not trusted; give its CA bundle "
            "(ca_bundle=, --ca-bundle or VRUNGPU_CA_BUNDLE)"
        )
    if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text:
        return f"{url} does not speak TLS (is it an http:// gateway?)"
    return f"TLS with {url} failed: {text.splitlines()[0] if text else type(exc).__name__}"

"""The gateway's remote kernels, client side: the REST calls of ``/api/kernels`` and one
kernel's ``/api/kernels/{id}/channels`` WebSocket (Jupyter JSON messages, protocol 5.3).

Usable without IPython and without the gateway package: `KernelsClientMixin` is mixed into
`VrunGPUClient`; `KernelChannel` sends requests and `Execution` reads one request's messages
until its reply and the kernel's return to idle.
"""

from __future__ import annotations

import getpass
import json
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import websocket

from vrungpu_magic.urls import seg

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)
Kernel = dict[str, Any]
Message = dict[str, Any]
PROTOCOL_VERSION = "5.3"
CHANNELS_QUIET_S = 30.0  # nothing received this long: ask the REST API whether the kernel lives
ENDED_STATES = ("dead", "restarting", "autorestarting")  # the kernel lost what it was running


def kernelspec_for(*, gpus: int | None = None, cpu: bool = False) -> str | None:
    """The kernelspec name for a placement; None: the gateway's default."""
    if cpu:
        return "vrungpu-cpu"
    if gpus is not None:
        return f"vrungpu-{gpus}gpu"
    return None


def _error(status: int, detail: str, code: str) -> Exception:
    from vrungpu_magic.client import VrunGPUError  # the client module imports this one

    return VrunGPUError(status, detail, code)


class KernelsClientMixin:
    """Kernelspecs and kernels: list, start (get-or-create by session name), stop, interrupt."""

    if TYPE_CHECKING:
        url: str
        token: str | None
        timeout: float

        @property
        def ws_url(self) -> str: ...

        @property
        def ws_options(self) -> dict[str, Any]: ...

        def _request(self, method: str, path: str, **kwargs: Any) -> Any: ...

        def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response: ...

    def kernelspecs(self) -> dict[str, Any]:
        """``{"default": name, "kernelspecs": {name: spec}}``."""
        return self._request("GET", "/api/kernelspecs")

    def list_kernels(self, session: str | None = None) -> list[Kernel]:
        """Live kernels; with ``session``, the one that has that session name (if any)."""
        params = {"session": session} if session is not None else None
        kernels = self._request("GET", "/api/kernels", params=params)
        if session is None:
            return kernels
        return [k for k in kernels if k.get("session") == session]

    def get_kernel(self, kernel_id: str) -> Kernel:
        return self._request("GET", f"/api/kernels/{seg(kernel_id)}")

    def start_kernel(
        self,
        spec: str | None = None,
        *,
        session: str | None = None,
        gpu_id: int | None = None,
        env: dict[str, str] | None = None,
    ) -> tuple[Kernel, bool]:
        """Start a kernel (or get the live one named ``session``); (kernel, newly started).

        Waits as long as the gateway's ``--kernel-queue-timeout`` for GPUs (503 after it).
        """
        if spec is None:
            spec = self.kernelspecs()["default"]
        body = {"name": spec, "session": session, "gpu_id": gpu_id, "env": env}
        body = {k: v for k, v in body.items() if v is not None}
        res = self._send("POST", "/api/kernels", json=body, timeout=max(self.timeout, 120))
        return res.json(), res.status_code == 201

    def shutdown_kernel(self, kernel_id: str) -> None:
        self._send("DELETE", f"/api/kernels/{seg(kernel_id)}")

    def interrupt_kernel(self, kernel_id: str) -> None:
        self._send("POST", f"/api/kernels/{seg(kernel_id)}/interrupt")

    def restart_kernel(self, kernel_id: str) -> Kernel:
        return self._request("POST", f"/api/kernels/{seg(kernel_id)}/restart")

    def kernel_channel(self, kernel_id: str) -> KernelChannel:
        """A connection to the kernel's channels (close it after use)."""
        return KernelChannel(self, kernel_id)


class KernelChannel:
    """One WebSocket to a kernel's channels: send requests, receive every channel's messages."""

    def __init__(self, client: KernelsClientMixin, kernel_id: str) -> None:
        self.client = client
        self.kernel_id = kernel_id
        self.session_id = uuid.uuid4().hex
        self.username = _username()
        base = client.ws_url
        url = f"{base}/api/kernels/{seg(kernel_id)}/channels?session_id={self.session_id}"
        header = [f"Authorization: token {client.token}"] if client.token else []
        try:
            self.ws = websocket.create_connection(
                url,
                header=header,
                timeout=client.timeout,
                suppress_origin=True,
                **client.ws_options,
            )
        except websocket.WebSocketBadStatusException as exc:
            raise _status_error(exc) from None
        except (OSError, websocket.WebSocketException) as exc:
            detail = f"cannot open kernel {kernel_id}'s channels at {client.url}: {exc}"
            raise _error(0, detail, "unreachable") from None

    def __enter__(self) -> KernelChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.ws.close()

    def send(
        self,
        msg_type: str,
        content: dict[str, Any],
        *,
        channel: str = "shell",
        parent: dict[str, Any] | None = None,
    ) -> str:
        """Send one message; returns its msg_id."""
        header = {
            "msg_id": uuid.uuid4().hex,
            "msg_type": msg_type,
            "session": self.session_id,
            "username": self.username,
            "date": datetime.now(UTC).isoformat(),
            "version": PROTOCOL_VERSION,
        }
        message = {
            "header": header,
            "parent_header": parent or {},
            "metadata": {},
            "content": content,
            "channel": channel,
            "buffers": [],
        }
        try:
            self.ws.send(json.dumps(message))
        except (OSError, websocket.WebSocketException) as exc:
            raise self._lost(exc) from None
        return header["msg_id"]

    def execute(
        self,
        code: str,
        *,
        silent: bool = False,
        store_history: bool = True,
        user_expressions: dict[str, str] | None = None,
        allow_stdin: bool = False,
    ) -> Execution:
        """Send an execute_request; the `Execution` reads its messages."""
        content = {
            "code": code,
            "silent": silent,
            "store_history": store_history,
            "user_expressions": user_expressions or {},
            "allow_stdin": allow_stdin,
            "stop_on_error": True,
        }
        return Execution(self, self.send("execute_request", content))

    def receive(self, timeout_s: float) -> Message | None:
        """The next JSON message, or None when nothing came within ``timeout_s``."""
        self.ws.settimeout(timeout_s)
        while True:
            try:
                raw = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                return None
            except (OSError, websocket.WebSocketException) as exc:
                raise self._lost(exc) from None
            if isinstance(raw, bytes):  # a message with binary buffers (comms): not ours
                continue
            if not raw:
                raise self._lost("the gateway closed the connection")
            try:
                return json.loads(raw)
            except ValueError:
                log.warning("kernel %s: a channel message that is not JSON", self.kernel_id)

    def _lost(self, why: object) -> Exception:
        detail = f"lost the connection to kernel {self.kernel_id} ({why}); what it runs goes on"
        return _error(0, detail, "connection_lost")


class KernelEnded(Exception):
    """The kernel died or was restarted while a request was running."""


class Execution:
    """The messages of one request: every channel's messages whose parent it is, until its
    reply has come and the kernel is idle again. Reading may resume after an interruption
    (e.g. a KeyboardInterrupt while waiting) with a new call to `messages`."""

    def __init__(self, channel: KernelChannel, msg_id: str) -> None:
        self.channel = channel
        self.msg_id = msg_id
        self.reply: Message | None = None
        self.idle = False
        self.idle_checks = False  # the last quiet check found the kernel idle

    @property
    def done(self) -> bool:
        return self.reply is not None and self.idle

    def messages(self, quiet_s: float = CHANNELS_QUIET_S) -> Iterator[Message]:
        """Yield this request's messages (iopub, stdin and its shell reply) as they come."""
        while not self.done:
            msg = self.channel.receive(quiet_s)
            if msg is None:
                self._on_quiet()
                continue
            self.idle_checks = False
            kind = msg.get("msg_type") or msg.get("header", {}).get("msg_type")
            content = msg.get("content") or {}
            if kind == "status" and content.get("execution_state") in ENDED_STATES:
                raise KernelEnded(f"the kernel is {content['execution_state']}")
            if (msg.get("parent_header") or {}).get("msg_id") != self.msg_id:
                continue
            if kind == "status":
                self.idle = content.get("execution_state") == "idle" or self.idle
            elif msg.get("channel") == "shell":
                self.reply = msg
            yield msg

    def _on_quiet(self) -> None:
        """Nothing for a while: a long cell, or a kernel that is gone."""
        if self.reply is not None:  # replied, but the idle status never came: done anyway
            self.idle = True
            return
        kernel = self.channel.client.get_kernel(self.channel.kernel_id)  # 404 when gone
        state = kernel.get("execution_state")
        if state in ENDED_STATES:
            raise KernelEnded(f"the kernel is {state}")
        if state == "idle" and self.idle_checks:  # idle twice in a row, and still no reply
            raise KernelEnded("the kernel is idle but never answered the request")
        self.idle_checks = state == "idle"


def _username() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "vrungpu"


def _status_error(exc: websocket.WebSocketBadStatusException) -> Exception:
    from vrungpu_magic.client import _status_error  # the client module imports this one

    return _status_error(exc)

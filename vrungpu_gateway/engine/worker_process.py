"""One model worker process, seen from the gateway: spawn, handshake, requests, stop.

The process runs ``worker_main.py`` in its own session; its stdout and stderr go to a log
file of its own (``data/logs/worker-{id}.log``), and the protocol (JSON lines) runs over a
socket pair, so nothing a model prints can garble it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import stat
from pathlib import Path
from typing import Any, Protocol

from vrungpu_gateway.engine import containment, worker_main
from vrungpu_gateway.engine.jobuser import JobUser
from vrungpu_gateway.engine.paths import read_own_file
from vrungpu_gateway.engine.runner import OutputCallback, signal_group

log = logging.getLogger(__name__)

WORKER_SCRIPT = Path(worker_main.__file__).resolve()
STREAM_LIMIT = 16 * 2**20  # one reply line: captured output is capped far below this
EXIT_WAIT_S = 2.0
LOG_TAIL_BYTES = 4096
INPUT_FILE = "input.json"
RESULT_FILE = "result.json"
MAX_INLINE_RESULT_BYTES = 16 * 2**20


class WorkerGone(Exception):
    """The worker process ended, or its socket broke; the message says how."""


class ModelProcess(Protocol):
    """A warm model worker as the pool drives it: a local process or one on a Ray node."""

    pid: int

    async def handshake(self) -> dict[str, Any]: ...

    async def request(self, message: dict[str, Any]) -> dict[str, Any]: ...

    async def stop(self, *, grace_s: float, kill: bool) -> int | None: ...


class SpawnWorker(Protocol):
    """How the pool starts a worker (``WorkerProcess.spawn`` or ``RayWorkers.spawn``)."""

    async def __call__(
        self,
        *,
        python: str,
        model_dir: Path,
        artifact: str,
        env: dict[str, str],
        log_path: Path,
        user: JobUser | None = None,
    ) -> ModelProcess: ...


class WorkerProcess:
    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        log_path: Path,
    ) -> None:
        self._proc = proc
        self._reader = reader
        self._writer = writer
        self.log_path = log_path
        self.pid: int = proc.pid
        self.user: JobUser | None = None  # the worker's own uid (None: ours)

    @classmethod
    async def spawn(
        cls,
        *,
        python: str,
        model_dir: Path,
        artifact: str,
        env: dict[str, str],
        log_path: Path,
        user: JobUser | None = None,
    ) -> WorkerProcess:
        """Start a worker for the model in ``model_dir`` (as ``user``, the job user, when
        given: the model's code is the user's); raises OSError when it cannot."""
        parent, child = socket.socketpair()
        try:
            with open(log_path, "ab") as log_file:
                proc = await asyncio.create_subprocess_exec(
                    *(python, "-u", str(WORKER_SCRIPT), "--fd", str(child.fileno())),
                    *("--artifact", artifact),
                    cwd=str(model_dir),
                    env={**env, worker_main.MODEL_DIR_VAR: str(model_dir)},  # not in /proc cmdline
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                    pass_fds=(child.fileno(),),
                    user=user.uid if user else None,
                    group=user.gid if user else None,
                    extra_groups=[] if user else None,
                )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent, limit=STREAM_LIMIT)
        worker = cls(proc, reader, writer, log_path)
        worker.user = user
        return worker

    async def handshake(self) -> dict[str, Any]:
        """The worker's first message: ``ready`` or ``load_error``."""
        return await self._receive()

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one request and wait for its reply."""
        try:
            self._writer.write(json.dumps(message).encode() + b"\n")
            await self._writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise WorkerGone(await self._exit_detail(f"its socket broke ({exc})")) from None
        return await self._receive()

    async def _receive(self) -> dict[str, Any]:
        try:
            line = await self._reader.readline()
        except (ConnectionError, ValueError) as exc:
            raise WorkerGone(await self._exit_detail(f"its socket broke ({exc})")) from None
        if not line:
            raise WorkerGone(await self._exit_detail("it closed its socket"))
        try:
            message = json.loads(line)
        except ValueError:
            raise WorkerGone(
                await self._exit_detail("it sent something that is not JSON")
            ) from None
        if not isinstance(message, dict):
            raise WorkerGone(await self._exit_detail("it sent something that is not an object"))
        return message

    async def _exit_detail(self, fallback: str) -> str:
        try:
            code: int | None = await asyncio.wait_for(self._proc.wait(), EXIT_WAIT_S)
        except TimeoutError:
            code = None
        what = f"exited with code {code}" if code is not None else fallback
        last = await asyncio.to_thread(_last_log_line, self.log_path)
        return f"the model worker (pid {self.pid}) {what}" + (f": {last}" if last else "")

    async def stop(self, *, grace_s: float, kill: bool) -> int | None:
        """End the worker: EOF first (it exits between requests), or SIGTERM at once if
        ``kill``; SIGKILL after ``grace_s``. Its whole process group goes with it."""
        with contextlib.suppress(Exception):
            self._writer.close()
        if kill:
            signal_group(self.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(self._proc.wait()), grace_s)
        except TimeoutError:
            if not kill:
                signal_group(self.pid, signal.SIGTERM)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._proc.wait()), grace_s)
        signal_group(self.pid, signal.SIGKILL)  # whatever is left in its group
        code = await self._proc.wait()
        if self.user is not None:  # and whatever the model's code left running as its uid
            with contextlib.suppress(OSError):
                await asyncio.to_thread(containment.kill_uid, self.user.uid, self.user.gid)
        log.info("worker pid %s: exited with %s", self.pid, code)
        await asyncio.to_thread(self.log_path.unlink, missing_ok=True)
        return code


def _last_log_line(path: Path) -> str | None:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - LOG_TAIL_BYTES))
            lines = fh.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return None
    return lines[-1].strip()[:500] if lines else None


# -- the inference task's side: its files and its log ---------------------------------------
def say(out: OutputCallback, stream: str, text: str) -> None:
    out(stream, (text if text.endswith("\n") else text + "\n").encode("utf-8", "replace"))


def write_input(workspace: Path, *, input_data: Any) -> str:
    """An inference task's workspace: its input as a JSON file (blocking)."""
    workspace.mkdir(parents=True, exist_ok=False)
    (workspace / INPUT_FILE).write_text(json.dumps(input_data), encoding="utf-8")
    return INPUT_FILE


def read_result(workspace: Path) -> Any:
    """The result the worker wrote, or a pointer to it when too large to keep inline. Read
    without following a link (the model's code may have swapped one in for a root file)."""
    path = workspace / RESULT_FILE
    data = read_own_file(path, None, MAX_INLINE_RESULT_BYTES)
    if data is not None:
        return json.loads(data)
    info = path.lstat()
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{RESULT_FILE} is not a regular file")
    return {
        "result_file": RESULT_FILE,
        "bytes": info.st_size,
        "detail": f"too large to inline; download {RESULT_FILE} from the task's files",
    }


def forward_output(out: OutputCallback, message: dict[str, Any]) -> None:
    """What the model printed (captured by the worker) into the task's log, then any trace."""
    for stream in ("stdout", "stderr"):
        text = message.get(stream)
        if isinstance(text, str) and text:
            say(out, stream, text)
    trace = message.get("traceback")
    if isinstance(trace, str) and trace.strip() and not trace.startswith("NoneType: None"):
        say(out, "stderr", trace)

"""The zygote: a warm interpreter that forks each job's shim, and the gateway's handle on it.

``python -u -m vrungpu_gateway.engine.zygote --socket PATH [--preload torch,numpy] [--parent N]``
imports the preload modules (never initialising CUDA; an import error ends it with status 2), then
serves one control connection on the Unix socket PATH (mode 0600), JSON lines:
- ``{"ping": true}`` -> ``{"pong": true}``;
- ``{"spec": "/abs/spec.json"}`` -> ``{"pid": N}``: a forked child, leading its own session,
  runs ``shim.run_shim(spec, launch=inprocess.launch_fork)`` and exits with its result;
  ``"entry": "module:function"`` replaces run_shim (tests only); ``{"error": "..."}`` otherwise.
The first connection accepted is the control connection: the zygote then removes the socket
file, accepts no other, and exits when that connection closes (the gateway stopped or died)
or at SIGTERM. Before it, the zygote exits as soon as its parent (``--parent PID``, the gateway)
is gone: a gateway killed while the zygote was still importing never connects. The shims it
forked live on: they are session leaders, reaped by the kernel (SIGCHLD ignored here), and hold
none of the zygote's sockets.

``Zygote`` is the asyncio client the gateway keeps per slot: ``start``, ``spawn``, ``healthy``,
``close``. Requests are serialized; a fork takes milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from vrungpu_gateway.engine.inprocess import launch_fork

DEFAULT_ENTRY = "vrungpu_gateway.engine.shim:run_shim"
EXIT_PRELOAD_FAILED = 2
START_TIMEOUT_S = 120.0  # a cold `import torch` on a slow disk
REPLY_TIMEOUT_S = 30.0
CONNECT_RETRY_S = 0.05
PARENT_CHECK_S = 0.2  # how often a zygote not yet connected checks that its gateway lives
LOG_TAIL_BYTES = 2000

Entry = Callable[..., int]


# -- the zygote process ----------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vrungpu_gateway.engine.zygote")
    parser.add_argument("--socket", required=True, help="Unix socket path to serve")
    parser.add_argument("--preload", default="", help="comma-separated modules to import")
    parser.add_argument("--parent", type=int, help="exit unconnected once this pid is gone")
    args = parser.parse_args(argv)
    parent = args.parent or os.getppid()
    error = preload([name.strip() for name in args.preload.split(",") if name.strip()])
    if error:
        print(f"vrungpu zygote: {error}", file=sys.stderr)
        return EXIT_PRELOAD_FAILED
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the forked shims
    gc.freeze()  # keep what is preloaded out of the children's collections: pages stay shared
    path = Path(args.socket)
    with _listen(path) as listener:
        conn = _accept(listener, parent=parent)
    if conn is None:
        print("vrungpu zygote: the gateway is gone; exiting", file=sys.stderr)
        return 0
    with conn:
        _serve(conn)
    return 0


def preload(names: list[str]) -> str | None:
    """Import ``names``; an error message, or None when all imported and CUDA is untouched."""
    for name in names:
        try:
            importlib.import_module(name)
        except BaseException as exc:  # a module may even sys.exit() at import
            return f"cannot preload {name}: {type(exc).__name__}: {exc}"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        # a forked child cannot use CUDA that its parent initialised
        return "a preloaded module initialised CUDA; jobs could not use the GPU"
    return None


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)  # unwinds through the finally blocks that remove the socket


@contextlib.contextmanager
def _listen(path: Path) -> Iterator[socket.socket]:
    """The listening socket, only until the control connection is accepted."""
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # 0600 from the start: no window where others may connect
    try:
        listener.bind(str(path))
        listener.listen(1)
        yield listener
    finally:
        os.umask(old_umask)
        listener.close()
        path.unlink(missing_ok=True)


def _accept(listener: socket.socket, *, parent: int) -> socket.socket | None:
    """The control connection, or None once ``parent`` is no longer our parent (it died, and
    no one else will connect: the zygote would otherwise wait in accept() for good)."""
    listener.settimeout(PARENT_CHECK_S)
    while os.getppid() == parent:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        conn.setblocking(True)
        return conn
    return None


def _serve(conn: socket.socket) -> None:
    for line in _lines(conn):
        reply = _handle(line, conn)
        conn.sendall(json.dumps(reply).encode() + b"\n")


def _lines(conn: socket.socket) -> Iterator[bytes]:
    buffer = b""
    while chunk := conn.recv(65536):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        yield from (line for line in lines if line.strip())


def _handle(line: bytes, conn: socket.socket) -> dict[str, Any]:
    try:
        request = json.loads(line)
    except ValueError:
        return {"error": "bad request: not a JSON line"}
    if not isinstance(request, dict):
        return {"error": "bad request: not a JSON object"}
    if request.get("ping"):
        return {"pong": True}
    spec = request.get("spec")
    if not isinstance(spec, str):
        return {"error": "bad request: spec must be a path"}
    try:
        entry = _resolve(str(request.get("entry") or DEFAULT_ENTRY))
    except (ImportError, AttributeError, ValueError) as exc:
        return {"error": f"cannot load the shim entry: {exc}"}
    try:
        return {"pid": _fork_shim(entry, spec, conn)}
    except OSError as exc:
        return {"error": f"fork failed: {exc}"}


def _resolve(target: str) -> Entry:
    """``module:function``, imported here in the zygote so every fork finds it warm."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{target!r} is not module:function")
    entry = getattr(importlib.import_module(module_name), attr)
    if not callable(entry):
        raise ValueError(f"{target} is not callable")
    return entry  # type: ignore[no-any-return]


def _fork_shim(entry: Entry, spec_path: str, conn: socket.socket) -> int:
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:
        os.setsid()  # not tied to the zygote: its session, its group, its death are not ours
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the shim waits for its job
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        conn.close()  # the zygote's EOF must not wait for a shim
        status = entry(spec_path, launch=launch_fork)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # the shim's own report; it lands in the zygote's log
        traceback.print_exc()
    finally:
        os._exit(status if isinstance(status, int) else 1)


# -- the gateway's client --------------------------------------------------------------------
class Zygote:
    """One running zygote, driven over its control connection from the gateway's event loop."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        log_path: Path,
    ) -> None:
        self.proc = proc
        self.log_path = log_path
        self._reader = reader
        self._writer = writer
        self._lock = asyncio.Lock()
        self._broken: str | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    async def start(
        cls,
        *,
        python: str,
        socket_path: Path,
        preload: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        timeout_s: float = START_TIMEOUT_S,
    ) -> Zygote:
        """Start a zygote and wait until it answers a ping; OSError (with the end of its log)
        if it exits or stays silent. ``env``: the zygote's environment — the jobs' allowlist,
        not the gateway's, since ``/proc/<job>/environ`` shows the zygote's."""
        proc = _spawn(python, socket_path, preload, log_path, env)
        try:
            reader, writer = await asyncio.wait_for(_connect(proc, socket_path), timeout_s)
        except (OSError, TimeoutError) as exc:
            await _stop(proc, grace_s=1.0)
            raise OSError(
                f"the zygote did not start ({exc or 'timeout'}): {_tail(log_path)}"
            ) from None
        except asyncio.CancelledError:  # the gateway stops meanwhile: no zygote left behind
            _kill_now(proc)
            raise
        zygote = cls(proc, reader, writer, log_path)
        try:
            if not (await zygote._request({"ping": True})).get("pong"):
                raise OSError("it did not answer the ping")
        except OSError as exc:
            await zygote.close(grace_s=1.0)
            raise OSError(f"the zygote did not start ({exc}): {_tail(log_path)}") from None
        except asyncio.CancelledError:
            writer.close()
            _kill_now(proc)
            raise
        return zygote

    def healthy(self) -> bool:
        return self._broken is None and self.proc.poll() is None

    async def spawn(self, spec_path: Path, *, entry: str | None = None) -> int:
        """Fork a shim for ``spec_path``; its pid. OSError when the zygote cannot."""
        request: dict[str, Any] = {"spec": str(spec_path)}
        if entry:  # tests only: a stand-in for shim.run_shim
            request["entry"] = entry
        reply = await self._request(request)
        if "error" in reply:
            raise OSError(f"zygote: {reply['error']}")
        pid = reply.get("pid")
        if not isinstance(pid, int):
            self._broken = f"unexpected reply {reply!r}"
            raise OSError(f"zygote: {self._broken}")
        return pid

    async def close(self, *, grace_s: float = 5.0) -> None:
        """Close the control connection (the zygote exits on it), then SIGTERM, then SIGKILL."""
        self._broken = self._broken or "closed"
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
        await _stop(self.proc, grace_s=grace_s)

    async def _request(self, payload: dict[str, Any]) -> dict[str, Any]:
        async with self._lock:
            if not self.healthy():
                raise OSError(f"zygote is not usable: {self._broken or 'it exited'}")
            try:
                self._writer.write(json.dumps(payload).encode() + b"\n")
                await self._writer.drain()
                line = await asyncio.wait_for(self._reader.readline(), REPLY_TIMEOUT_S)
                if not line:
                    raise OSError("it closed the connection")
                reply = json.loads(line)
            except BaseException as exc:
                # a lost or late reply would answer the next request: never reuse this one
                self._broken = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, OSError | TimeoutError | ValueError):
                    raise OSError(f"zygote: {self._broken}") from exc
                raise
        return reply if isinstance(reply, dict) else {"error": f"bad reply {reply!r}"}


def _spawn(
    python: str,
    socket_path: Path,
    preload: list[str],
    log_path: Path,
    env: dict[str, str] | None,
) -> subprocess.Popen[bytes]:
    socket_path.unlink(missing_ok=True)  # never talk to an older zygote left at this path
    command = [python, "-u", "-m", "vrungpu_gateway.engine.zygote", "--socket", str(socket_path)]
    command += ["--parent", str(os.getpid())]
    if preload:
        command += ["--preload", ",".join(preload)]
    with open(log_path, "ab") as log:
        return subprocess.Popen(  # noqa: S603 - our own module under our interpreter
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # the gateway's terminal and group signals stay away
        )


async def _connect(
    proc: subprocess.Popen[bytes], socket_path: Path
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    # Polled: the zygote has no other channel to say "listening" before its imports finish.
    while True:
        if proc.poll() is not None:
            raise OSError(f"it exited with status {proc.returncode}")
        try:
            return await asyncio.open_unix_connection(str(socket_path))
        except (FileNotFoundError, ConnectionRefusedError):
            await asyncio.sleep(CONNECT_RETRY_S)


async def _stop(proc: subprocess.Popen[bytes], *, grace_s: float) -> None:
    """Wait for the zygote to exit; SIGTERM after ``grace_s``, SIGKILL after as long again.
    Only its pid is signalled: a shim just forked may not have left the zygote's group yet."""
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None and proc.poll() is None:
            proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(proc.wait, grace_s if sig is not signal.SIGKILL else None)
            return


def _kill_now(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL and reap, without awaiting (for a start that is being cancelled)."""
    with contextlib.suppress(OSError):
        proc.kill()
    proc.wait()


def _tail(log_path: Path) -> str:
    try:
        with open(log_path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
            text = log.read().decode(errors="replace").strip()
    except OSError as exc:
        return f"(no log: {exc})"
    return text.replace("\n", " | ") or "(empty log)"


if __name__ == "__main__":
    sys.exit(main())

"""One job on a Ray node: the actor that unpacks its workspace, runs it and serves its output.

``JobActor`` is made a Ray actor by ``engine/ray_runner.py`` (detached and named, so it outlives
the gateway that started it). It needs ``ray`` and this package on the node: it unpacks the
workspace zip into a temp dir, starts the job in a session of its own (as the gateway's
``--job-user`` where the Ray worker is root) with the ``CUDA_VISIBLE_DEVICES`` Ray gave the
actor, writes stdout and stderr to files beside it, and answers reads at byte offsets, the
job's status, a kill (the group: SIGTERM, grace, SIGKILL) and the workspace as a zip for the
gateway to fetch back. ``KernelActor`` does the same for a remote kernel
(``engine/ray_kernels.py``): the kernel process, its connection file and signals;
``ModelWorkerActor`` for a warm model worker (``engine/ray_workers.py``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

from vrungpu_gateway.engine import jobuser

STREAMS = ("stdout", "stderr")


def zip_dir(root: Path) -> bytes:
    """The regular files under ``root`` as a zip (symlinks are not followed)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                archive.write(path, path.relative_to(root).as_posix())
    return buffer.getvalue()


def unzip_into(data: bytes, root: Path) -> None:
    """Extract a zip made by ``zip_dir`` (zipfile keeps every name inside ``root``)."""
    root.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        archive.extractall(root)


class JobActor:
    """Runs one job on its node; every method is safe to call from several threads."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.dir = Path(tempfile.mkdtemp(prefix=f"vrungpu-{task_id}-"))
        self.workspace = self.dir / "workspace"
        self.proc: subprocess.Popen[bytes] | None = None
        self.cuda = ""
        self.limit_bytes = 0  # per stream, as the gateway's --max-log-mb
        self.notice = b""  # what ends a stream cut at the limit
        self._lock = threading.Lock()

    def start(self, spec: dict[str, Any], workspace_zip: bytes) -> dict[str, Any]:
        """Unpack the workspace and start the job; what ``info`` says, or an ``error``."""
        import ray  # present on every Ray node; imported here so the module needs no Ray

        unzip_into(workspace_zip, self.workspace)
        self.limit_bytes, self.notice = spec["max_log_bytes"], spec["notice"]
        self.cuda = ",".join(str(int(i)) for i in ray.get_gpu_ids())
        env = dict(spec["env"])
        env["CUDA_VISIBLE_DEVICES"] = self.cuda
        env["VRUNGPU_WORKSPACE"] = str(self.workspace)
        argv = list(spec["argv"])
        if not os.path.exists(argv[0]):  # the gateway's interpreter is not on this node
            argv[0] = sys.executable
        try:
            user, env = as_job_user(spec.get("user"), self.dir, self.workspace, env)
        except ValueError as exc:
            return {"error": str(exc)}
        try:
            with (
                open(self._log(STREAMS[0]), "ab") as out,
                open(self._log(STREAMS[1]), "ab") as err,
            ):
                self.proc = subprocess.Popen(
                    argv,
                    cwd=self.workspace,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,  # its own group: kill() ends all of it
                    preexec_fn=_default_signals,  # SIGTERM must reach it (grace)
                    **popen_user(user),
                )
        except OSError as exc:
            return {"error": str(exc)}
        return self.info()

    def _log(self, stream: str) -> Path:
        return self.dir / f"{stream}.log"

    def info(self) -> dict[str, Any]:
        import ray

        ctx = ray.get_runtime_context()
        return {
            "started": self.proc is not None,
            "pid": self.proc.pid if self.proc else None,
            "node_id": ctx.get_node_id(),
            "cuda_visible_devices": self.cuda,
        }

    def poll(self, offsets: dict[str, int], max_bytes: int) -> tuple[dict[str, bytes], int | None]:
        """Output from ``offsets`` on (at most ``max_bytes`` a stream) and the exit code, read
        first: with a code, the chunks hold everything up to their end. A stream is served up
        to the log limit, then the notice once (offsets past the limit get nothing)."""
        code = None if self.proc is None else self.proc.poll()
        return {s: self._read(s, offsets.get(s, 0), max_bytes) for s in STREAMS}, code

    def _read(self, stream: str, offset: int, max_bytes: int) -> bytes:
        if offset >= self.limit_bytes:
            return b""
        try:
            with open(self._log(stream), "rb") as file:
                file.seek(offset)
                data = file.read(min(max_bytes, self.limit_bytes - offset))
                over = offset + len(data) == self.limit_bytes and bool(file.read(1))
        except OSError:
            return b""
        return data + self.notice if over else data

    def kill(self, grace_s: float) -> int | None:
        """SIGTERM to the job's group, SIGKILL after ``grace_s``; its exit code."""
        return None if self.proc is None else end_group(self.proc, grace_s)

    def workspace_zip(self) -> bytes:
        return zip_dir(self.workspace)

    def close(self) -> None:
        """End whatever is left of the job and remove its files (the actor is killed next)."""
        with self._lock:
            if self.proc is not None:
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            shutil.rmtree(self.dir, ignore_errors=True)


class KernelActor:
    """One kernel process on its node; the methods are safe from several threads."""

    def __init__(self, kernel_id: str) -> None:
        self.kernel_id = kernel_id
        self.dir = Path(tempfile.mkdtemp(prefix=f"vrungpu-kernel-{kernel_id}-"))
        self.workspace = self.dir / "workspace"
        self.workspace.mkdir()
        self.connection_file = self.dir / "kernel.json"
        self.connection: dict[str, Any] | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def start(self, spec: dict[str, Any]) -> dict[str, Any]:
        """(Re)start the kernel process; its connection info (node ip, ports, key), or error."""
        import ray
        from jupyter_client.connect import write_connection_file

        with self._lock:
            if self.connection is None:  # ports stay the same across restarts
                _, written = write_connection_file(
                    str(self.connection_file),
                    ip=ray.util.get_node_ip_address(),
                    key=spec["key"].encode(),
                    kernel_name=self.kernel_id,
                )
                self.connection = dict(written)
            env = dict(spec["env"])
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(int(i)) for i in ray.get_gpu_ids())
            env["VRUNGPU_WORKSPACE"] = str(self.workspace)
            argv = [str(self.connection_file) if a == "{connection_file}" else a
                    for a in spec["argv"]]  # fmt: skip
            if not os.path.exists(argv[0]):  # the gateway's interpreter is not on this node
                argv[0] = sys.executable
            if not os.path.exists(argv[2]):  # nor its package: ipykernel's own launcher
                argv[2:3] = ["-m", "ipykernel_launcher"]
            try:
                user, env = as_job_user(spec.get("user"), self.dir, self.workspace, env)
                if user is not None:  # the kernel reads its connection file
                    os.chown(self.connection_file, user.uid, user.gid)
            except ValueError as exc:
                return {"error": str(exc)}
            try:
                with open(self.dir / "stderr.log", "ab") as err:
                    self.proc = subprocess.Popen(
                        argv,
                        cwd=self.workspace,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                        start_new_session=True,
                        preexec_fn=_default_signals,  # an interrupt must reach the kernel
                        **popen_user(user),
                    )
            except OSError as exc:
                return {"error": str(exc)}
            return {"connection": self.connection, **self.info()}

    def info(self) -> dict[str, Any]:
        import ray

        return {
            "pid": self.proc.pid if self.proc else None,
            "alive": self.proc is not None and self.proc.poll() is None,
            "node_id": ray.get_runtime_context().get_node_id(),
        }

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def interrupt(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            os.killpg(self.proc.pid, signal.SIGINT)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def kill(self, grace_s: float) -> int | None:
        """SIGTERM to the kernel's group, SIGKILL after ``grace_s``; its exit code."""
        return None if self.proc is None else end_group(self.proc, grace_s)

    def stderr_tail(self) -> str:
        try:
            data = (self.dir / "stderr.log").read_bytes()[-4096:]
        except OSError:
            return ""
        lines = [line.strip() for line in data.decode(errors="replace").splitlines()]
        return next((line for line in reversed(lines) if line), "")

    def close(self) -> None:
        """End the kernel's group at once and remove its files (the actor is killed next)."""
        if self.proc is not None:
            self.kill(0.0)
        shutil.rmtree(self.dir, ignore_errors=True)


class ModelWorkerActor:
    """One warm model worker (``engine/worker_main.py``) on its node: the model folder comes
    as a zip, each request's input as bytes, and its result goes back as bytes. The worker
    speaks its JSON lines to this actor over a socket pair as it would to the gateway."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.dir = Path(tempfile.mkdtemp(prefix=f"vrungpu-{worker_id}-"))
        self.model_dir = self.dir / "model"
        self.requests = self.dir / "requests"
        self.log = self.dir / "worker.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.user: jobuser.JobUser | None = None  # the --job-user it runs as (None: ours)
        self._sock: socket.socket | None = None
        self._reader: Any = None
        self._lock = threading.Lock()  # one request at a time on the socket

    def start(self, spec: dict[str, Any], model_zip: bytes) -> dict[str, Any]:
        """Unpack the model and start its worker; its pid and node, or an ``error``."""
        import ray

        from vrungpu_gateway.engine import worker_main

        unzip_into(model_zip, self.model_dir)
        self.requests.mkdir()
        env = dict(spec["env"])
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(int(i)) for i in ray.get_gpu_ids())
        env["VRUNGPU_WORKSPACE"] = str(self.model_dir)
        python = spec["python"] if os.path.exists(spec["python"]) else sys.executable
        try:  # the worker reads its model and writes each request's result, nothing more
            self.user, env = as_job_user(spec.get("user"), self.dir, self.requests, env)
        except ValueError as exc:
            return {"error": str(exc)}
        jobuser.share_read(self.model_dir, self.user)
        parent, child = socket.socketpair()
        try:
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [python, "-u", worker_main.__file__, "--fd", str(child.fileno()),
                     "--model-dir", str(self.model_dir), "--artifact", spec["artifact"]],
                    cwd=self.model_dir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    pass_fds=(child.fileno(),),
                    preexec_fn=_default_signals,
                    **popen_user(self.user),
                )  # fmt: skip
        except OSError as exc:
            parent.close()
            return {"error": str(exc)}
        finally:
            child.close()
        self._sock, self._reader = parent, parent.makefile("rb")
        return {"pid": self.proc.pid, "node_id": ray.get_runtime_context().get_node_id()}

    def handshake(self) -> dict[str, Any] | None:
        """The worker's first message (``ready`` or ``load_error``); None: it ended."""
        return self._receive()

    def predict(self, request_id: str, input_json: bytes) -> tuple[dict[str, Any] | None, bytes]:
        """One request: the worker's reply (None: it ended) and the result file's bytes."""
        with self._lock:
            folder = self.requests / request_id
            folder.mkdir()
            try:
                (folder / "input.json").write_bytes(input_json)
                jobuser.hand_over(str(folder), self.user)  # the worker writes its result here
                message = {
                    "id": request_id,
                    "input": str(folder / "input.json"),
                    "output": str(folder / "result.json"),
                }
                try:
                    assert self._sock is not None
                    self._sock.sendall(json.dumps(message).encode() + b"\n")
                except OSError:
                    return None, b""
                reply = self._receive()
                result = folder / "result.json"
                return reply, result.read_bytes() if result.exists() else b""
            finally:
                shutil.rmtree(folder, ignore_errors=True)

    def _receive(self) -> dict[str, Any] | None:
        try:
            line = self._reader.readline()
            return json.loads(line) if line else None
        except (OSError, ValueError):
            return None

    def exit_detail(self) -> tuple[int | None, str]:
        """The worker's exit code (None: it runs) and the last line of its log."""
        code = None
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.proc.wait(timeout=2.0)
        try:
            tail = self.log.read_bytes()[-4096:].decode(errors="replace").strip().splitlines()
        except OSError:
            tail = []
        return code, (tail[-1].strip()[:500] if tail else "")

    def stop(self, grace_s: float, kill: bool) -> int | None:
        """EOF first (the worker exits between requests), or SIGTERM at once if ``kill``;
        SIGKILL after ``grace_s``: its exit code."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_WR)
        if self.proc is None:
            return None
        if not kill:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace_s)
        return end_group(self.proc, grace_s)

    def close(self) -> None:
        """End what is left of the worker and remove its files (the actor is killed next)."""
        if self.proc is not None:
            end_group(self.proc, 0.0)
        if self._sock is not None:
            self._sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def as_job_user(
    name: str | None, actor_dir: Path, own: Path, env: dict[str, str]
) -> tuple[jobuser.JobUser | None, dict[str, str]]:
    """Who the actor's process runs as, and its environment: the gateway's ``--job-user``
    ``name`` when this Ray worker is root (``own`` is handed to that user, the actor's folder
    made passable, nothing else in it opened); None when no user is asked or this worker is
    not root (the process runs as the Ray worker's user). ValueError: no such user here."""
    if not name or os.geteuid() != 0:
        return None, env
    user = jobuser.JobUser.named(name)
    actor_dir.chmod(0o711)
    jobuser.hand_over(str(own), user)
    return user, jobuser.environment(env, user, str(own))


def popen_user(user: jobuser.JobUser | None) -> dict[str, Any]:
    """``subprocess.Popen`` arguments that start the process as ``user`` (none: as we are)."""
    if user is None:
        return {}
    return {"user": user.uid, "group": user.gid, "extra_groups": []}


def end_group(proc: subprocess.Popen[bytes], grace_s: float) -> int:
    """SIGTERM to the group ``proc`` leads, SIGKILL after ``grace_s`` (what it left in its
    group too); its exit code."""
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    _signal_group(proc.pid, signal.SIGKILL)
    return proc.wait()


def _default_signals() -> None:
    """In the child: the signals a Ray worker thread blocks or ignores, as a shell gives them."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)

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
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

from vrungpu_gateway.engine import containment, jobuser
from vrungpu_gateway.engine.paths import read_own_file

STREAMS = ("stdout", "stderr")
MAX_RESULT_BYTES = 64 * 2**20  # a result a model worker on Ray sends back to the gateway
MAX_FETCH_BYTES = 2**30  # a job's files a Ray node sends back at its end (in memory)
NOT_FETCHED = "vrungpu-not-fetched.txt"


def zip_dir(root: Path, *, owner: int | None = None, limit: int | None = None) -> bytes:
    """The regular files under ``root`` as a zip (symlinks are not followed); with ``owner``,
    only the files that uid owns (a job user's folder: never a root file linked into it); with
    ``limit``, files up to that many bytes in all, and ``NOT_FETCHED`` naming the others."""
    buffer = io.BytesIO()
    left, skipped = limit, []
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for path in sorted(root.rglob("*")):
            name = path.relative_to(root).as_posix()
            data = read_own_file(path, owner, left)
            if data is None and left is not None and _size(path) > left:
                skipped.append(name)
            elif data is not None:
                archive.writestr(name, data)
                left = None if left is None else left - len(data)
        if skipped:
            notice = f"Not fetched from the Ray node (over {limit:,} bytes in all):\n"
            archive.writestr(NOT_FETCHED, notice + "".join(f"{n}\n" for n in skipped))
    return buffer.getvalue()


def _size(path: Path) -> int:
    """A regular file's size (0 for anything else)."""
    try:
        info = os.lstat(path)
    except OSError:
        return 0
    return info.st_size if stat.S_ISREG(info.st_mode) else 0


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
        self.workspace = self.dir / unguessable("workspace")
        self.proc: subprocess.Popen[bytes] | None = None
        self.user: jobuser.JobUser | None = None  # the task's own uid it runs as (None: ours)
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
            self.user, env = as_job_user(
                spec.get("user"), self.dir, env, home=self.workspace, give=True
            )
        except OSError as exc:
            return {"error": str(exc)}
        try:
            with (
                open_private(self._log(STREAMS[0])) as out,
                open_private(self._log(STREAMS[1])) as err,
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
                    **popen_user(self.user),
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
        if self.proc is None:
            return None
        return end_group(self.proc, grace_s, self.task_id, self.user)

    def workspace_zip(self) -> bytes:
        """The workspace once the job ended, after what it left running is gone."""
        if self.proc is not None:
            end_group(self.proc, 0.0, self.task_id, self.user)
        owner = self.user.uid if self.user else None
        return zip_dir(self.workspace, owner=owner, limit=MAX_FETCH_BYTES)

    def close(self) -> None:
        """End whatever is left of the job and remove its files (the actor is killed next)."""
        with self._lock:
            if self.proc is not None:
                end_group(self.proc, 0.0, self.task_id, self.user)
            shutil.rmtree(self.dir, ignore_errors=True)


class KernelActor:
    """One kernel process on its node; the methods are safe from several threads."""

    def __init__(self, kernel_id: str) -> None:
        self.kernel_id = kernel_id
        self.dir = Path(tempfile.mkdtemp(prefix=f"vrungpu-kernel-{kernel_id}-"))
        self.workspace = self.dir / unguessable("workspace")
        self.workspace.mkdir()
        self.connection_file = self.dir / unguessable("kernel", ".json")  # it holds the key
        self.connection: dict[str, Any] | None = None
        self.user: jobuser.JobUser | None = None  # the task's own uid it runs as (None: ours)
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def start(self, spec: dict[str, Any]) -> dict[str, Any]:
        """(Re)start the kernel process; its connection info (node ip, ports, key), or error."""
        import ray
        from jupyter_client.connect import write_connection_file

        with self._lock:
            first = self.connection is None  # a restart keeps the ports and the workspace
            if first:
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
                # the workspace is handed over once: at a restart it holds the user's files
                self.user, env = as_job_user(
                    spec.get("user"), self.dir, env, home=self.workspace, give=first
                )
                if self.user is not None:  # the kernel reads its connection file
                    os.chown(self.connection_file, self.user.uid, self.user.gid)
            except OSError as exc:
                return {"error": str(exc)}
            try:
                with open_private(self.dir / "stderr.log") as err:
                    self.proc = subprocess.Popen(
                        argv,
                        cwd=self.workspace,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                        start_new_session=True,
                        preexec_fn=_default_signals,  # an interrupt must reach the kernel
                        **popen_user(self.user),
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
        if self.proc is None:
            return None
        return end_group(self.proc, grace_s, self.kernel_id, self.user)

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
        self.model_dir = self.dir / unguessable("model")
        self.log = self.dir / "worker.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.user: jobuser.JobUser | None = None  # the task's own uid it runs as (None: ours)
        self._sock: socket.socket | None = None
        self._reader: Any = None
        self._lock = threading.Lock()  # one request at a time on the socket

    def start(self, spec: dict[str, Any], model_zip: bytes) -> dict[str, Any]:
        """Unpack the model and start its worker; its pid and node, or an ``error``."""
        import ray

        from vrungpu_gateway.engine import worker_main

        unzip_into(model_zip, self.model_dir)
        env = dict(spec["env"])
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(int(i)) for i in ray.get_gpu_ids())
        env["VRUNGPU_WORKSPACE"] = str(self.model_dir)
        python = spec["python"] if os.path.exists(spec["python"]) else sys.executable
        try:  # the worker reads its model and writes each request's result, nothing more
            self.user, env = as_job_user(
                spec.get("user"), self.dir, env, home=self.model_dir, give=False
            )
        except OSError as exc:
            return {"error": str(exc)}
        jobuser.share_read(self.model_dir, self.user)
        parent, child = socket.socketpair()
        try:
            with open_private(self.log) as log:
                self.proc = subprocess.Popen(
                    [python, "-u", worker_main.__file__, "--fd", str(child.fileno()),
                     "--artifact", spec["artifact"]],
                    cwd=self.model_dir,
                    env={**env, worker_main.MODEL_DIR_VAR: str(self.model_dir)},  # not in cmdline
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
        """One request: the worker's reply (None: it ended) and the result file's bytes.

        Its folder is made here, in the actor's own (which the job user cannot change), with
        the input in it, and only then given to the job user; the result is read without
        following links and only if the job user owns it, so a hostile model cannot turn a
        root read or chown of ours onto another file."""
        with self._lock:
            folder = self.dir / unguessable("request")
            folder.mkdir(mode=0o700)
            try:
                (folder / "input.json").write_bytes(input_json)
                if self.user is not None:
                    os.chown(folder, self.user.uid, self.user.gid)
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
                if reply is None or not reply.get("ok"):
                    return reply, b""
                owner = self.user.uid if self.user else None
                result = read_own_file(folder / "result.json", owner, MAX_RESULT_BYTES)
                if result is None:
                    reply.update(ok=False, error=_result_refused(folder / "result.json"))
                    return reply, b""
                return reply, result
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
        return end_group(self.proc, grace_s, self.worker_id, self.user)

    def close(self) -> None:
        """End what is left of the worker and remove its files (the actor is killed next)."""
        if self.proc is not None:
            end_group(self.proc, 0.0, self.worker_id, self.user)
        if self._sock is not None:
            self._sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def as_job_user(
    asked: dict[str, Any] | None, actor_dir: Path, env: dict[str, str], *, home: Path, give: bool
) -> tuple[jobuser.JobUser | None, dict[str, str]]:
    """Who the actor's process runs as, and its environment: the task's own uid the gateway
    chose (``JobUser.for_task``, no account needed on the node) when this Ray worker is root
    (``home`` is its HOME, handed to it if ``give``; the actor's folder becomes passable, not
    readable: what the user may reach in it has an unguessable name, the rest is 0600); None
    when none is asked or this worker is not root (it runs as the Ray worker's user)."""
    if not asked or os.geteuid() != 0:
        return None, env
    user = jobuser.JobUser(**asked)
    actor_dir.chmod(0o711)
    if give:
        jobuser.hand_over(str(home), user)
    return user, jobuser.environment(env, user, str(home))


def unguessable(name: str, suffix: str = "") -> str:
    """A name in an actor's folder that only those told it can open (the folder is 0711)."""
    return f"{name}-{secrets.token_hex(16)}{suffix}"


def open_private(path: Path) -> Any:
    """``path`` opened to append, readable by its owner only (a log of the actor's)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")


def _result_refused(path: Path) -> str:
    try:
        size = os.lstat(path).st_size
    except OSError:
        return "predict() wrote no result file"
    if size > MAX_RESULT_BYTES:
        return (
            f"the result is {size:,} bytes: a model served on Ray sends back at most "
            f"{MAX_RESULT_BYTES // 2**20} MB"
        )
    return "the result file is not a regular file of the model worker's own"


def popen_user(user: jobuser.JobUser | None) -> dict[str, Any]:
    """``subprocess.Popen`` arguments that start the process as ``user`` (none: as we are)."""
    if user is None:
        return {}
    return {"user": user.uid, "group": user.gid, "extra_groups": []}


def end_group(
    proc: subprocess.Popen[bytes],
    grace_s: float,
    marker: str,
    user: jobuser.JobUser | None = None,
) -> int:
    """SIGTERM to the group ``proc`` leads, SIGKILL after ``grace_s``, then to whatever it
    left running: in its group, elsewhere with its ``VRUNGPU_TASK_ID`` (``marker``), or as
    its own uid (``user``); its exit code."""
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    _signal_group(proc.pid, signal.SIGKILL)
    code = proc.wait()
    containment.kill_leftovers(marker, job_pgid=proc.pid, uid=user.uid if user else None)
    return code


def _default_signals() -> None:
    """In the child: the signals a Ray worker thread blocks or ignores, as a shell gives them."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)

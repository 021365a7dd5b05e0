"""The runner seam: start (or adopt) a job -> a handle with pid, wait and kill.

``DetachedRunner`` runs each job under its own shim (``engine/shim.py``), a process that does
not depend on the gateway: the shim writes the job's output to the log files and its outcome
to an exit file, and this side follows those files. A gateway that stops, crashes or is
upgraded leaves its jobs running, and ``adopt`` follows them again after its next start.
With a warm zygote (``--preload``) the shim is forked from it instead of started cold.
The warm model workers (``engine/workers.py``) implement the same ``Runner`` protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from vrungpu_gateway.engine import containment
from vrungpu_gateway.engine import logs as logfiles
from vrungpu_gateway.engine.environment import ALLOWED
from vrungpu_gateway.engine.jobuser import JobUser
from vrungpu_gateway.engine.shim import ShimSpec
from vrungpu_gateway.protocol import STREAMS, FailureReason

log = logging.getLogger(__name__)

OutputCallback = Callable[[str, bytes], None]  # (stream name, raw chunk)
Pace = Callable[[], Awaitable[None]]  # awaited after each chunk of output handed on
READ_CHUNK = 64 * 1024  # per stream and turn of the loop, like a pipe's buffer
TAIL_INTERVAL_S = 0.05  # how often a running job's log files are checked for new output
ADOPT_TAIL_BYTES = 256 * 1024  # re-read at adoption for the latest progress
SHIM_START_S = 10.0  # a shim writes its state file first thing: this long at most


@dataclass(frozen=True)
class JobSpec:
    task_id: str
    argv: list[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    grace_s: float = 10.0


@dataclass(frozen=True)
class JobExit:
    """How a job ended: its exit code, and why when the runner ended it."""

    return_code: int | None
    reason: FailureReason | None = None
    error: str | None = None
    truncated: dict[str, bool] = field(default_factory=dict)


class JobHandle(Protocol):
    pid: int
    # Where the output passed to on_output starts in the log files, when the runner writes
    # them itself; None when the supervisor is to write what on_output receives.
    log_offsets: dict[str, int] | None
    owns_deadline: bool  # the runner ends the job at its timeout itself

    async def wait(self) -> JobExit:
        """How the job ended, once it did and its output was delivered."""
        ...

    async def kill(self, *, grace_s: float) -> None:
        """End the job: SIGTERM to all of its processes, then SIGKILL after ``grace_s``."""
        ...


class Runner(Protocol):
    async def start(self, spec: JobSpec, on_output: OutputCallback) -> JobHandle:
        """Start the job; raise OSError when it cannot be started at all."""
        ...


class Backend(Runner, Protocol):
    """The execution backend seam the task manager uses (chosen by ``--backend``): a runner
    whose jobs outlive the gateway. ``DetachedRunner`` (local processes) and ``RayRunner``
    (``engine/ray_runner.py``) implement it."""

    async def was_started(self, task_id: str) -> bool:
        """Whether the job of ``task_id`` ever started (else it is queued again)."""
        ...

    async def adopt(self, *, task_id: str, on_output: OutputCallback) -> JobHandle | JobExit:
        """Follow a job a previous gateway started: its handle, or how it ended meanwhile."""
        ...

    def forget(self, task_id: str) -> None:
        """Remove what the backend kept of an ended job (blocking)."""
        ...


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to a process group; False when the group is gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        log.warning("no permission to signal process group %s", pgid)
        return False
    return True


@dataclass(frozen=True)
class JobFiles:
    """The files of one job under the data dir: its spec, state and exit, and its logs."""

    run_dir: Path
    logs_dir: Path
    task_id: str

    def _at(self, suffix: str) -> Path:
        return self.run_dir / f"{self.task_id}.{suffix}"

    @property
    def spec(self) -> Path:
        return self._at("spec.json")

    @property
    def state(self) -> Path:
        return self._at("state.json")

    @property
    def exit(self) -> Path:
        return self._at("exit.json")

    @property
    def shim_log(self) -> Path:
        return self._at("shim.log")

    def log(self, stream: str) -> Path:
        return logfiles.log_path(self.logs_dir, self.task_id, stream)

    def read(self, path: Path) -> dict[str, Any] | None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        for path in (self.spec, self.state, self.exit, self.shim_log):
            path.unlink(missing_ok=True)


class DetachedHandle:
    """Follows one shim: its log files as they grow, and its exit."""

    owns_deadline = True

    def __init__(
        self,
        *,
        files: JobFiles,
        pid: int,
        on_output: OutputCallback,
        offsets: dict[str, int],
        proc: subprocess.Popen[bytes] | None = None,
        pace: Pace | None = None,
    ) -> None:
        self.files = files
        self._pace = pace
        self.pid = pid
        self.log_offsets: dict[str, int] | None = dict(offsets)
        self._read_at = dict(offsets)
        self._on_output = on_output
        self._proc = proc
        self._fds: dict[str, int] = {}
        self._exited = _exit_future(pid)
        self._tailer = asyncio.ensure_future(self._tail())

    async def _tail(self) -> None:
        while not self._exited.done():
            if not self._read_some():
                await asyncio.wait({self._exited}, timeout=TAIL_INTERVAL_S)
            else:
                await self._after_chunk()

    async def _after_chunk(self) -> None:
        """Let the loop serve others, and readers that fell behind catch up a little."""
        if self._pace is not None:
            await self._pace()
        await asyncio.sleep(0)

    def _read_some(self) -> bool:
        """Deliver at most one chunk of each stream; whether there was any."""
        got = False
        for stream in STREAMS:
            fd = self._fd(stream)
            if fd is None:
                continue
            data = os.pread(fd, READ_CHUNK, self._read_at[stream])
            if data:
                self._read_at[stream] += len(data)
                self._on_output(stream, data)
                got = True
        return got

    def _fd(self, stream: str) -> int | None:
        fd = self._fds.get(stream)
        if fd is None:
            try:
                fd = self._fds[stream] = os.open(self.files.log(stream), os.O_RDONLY)
            except FileNotFoundError:
                return None
        return fd

    async def wait(self) -> JobExit:
        await asyncio.shield(self._exited)
        self._tailer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._tailer
        while self._read_some():  # everything the shim wrote before it exited
            await self._after_chunk()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._proc is not None:
            await asyncio.to_thread(self._proc.wait)  # reap our own child
        return await asyncio.to_thread(read_exit, self.files)

    async def kill(self, *, grace_s: float) -> None:
        """Ask the shim to end the job (it applies the grace itself).

        A shim takes SIGTERM as a cancel only once its handler is set, and it writes its state
        file right after: a signal sent sooner would end it unrecorded, or be dropped by the
        handler it inherited from the zygote. So wait for that file first.
        """
        for _ in range(int(SHIM_START_S / 0.02)):
            if self.files.state.exists() or self._exited.done():
                break
            await asyncio.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)

    def detach(self) -> None:
        """Stop following (the gateway stops; the job runs on)."""
        self._tailer.cancel()
        self._exited.cancel()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _exit_future(pid: int) -> asyncio.Future[None]:
    """Resolves when ``pid`` exits (a pidfd; polling /proc where there is none)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        done.set_result(None)
        return done
    except (OSError, AttributeError):
        asyncio.ensure_future(_poll_exit(pid, done))
        return done

    def readable() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        if not done.done():
            done.set_result(None)

    def cancelled(_: asyncio.Future[None]) -> None:
        if done.cancelled():
            loop.remove_reader(pidfd)
            os.close(pidfd)

    loop.add_reader(pidfd, readable)
    done.add_done_callback(cancelled)
    return done


async def _poll_exit(pid: int, done: asyncio.Future[None]) -> None:
    while containment.is_alive(pid) and not done.done():
        await asyncio.sleep(0.1)
    if not done.done():
        done.set_result(None)


def read_exit(files: JobFiles) -> JobExit:
    """The outcome the shim recorded; a vanished shim's job is killed and reported lost."""
    data = files.read(files.exit)
    if data is None:
        state = files.read(files.state) or {}
        group = Path(state["cgroup"]) if state.get("cgroup") else None
        killed = containment.kill_leftovers(
            files.task_id, group=group, job_pgid=state.get("job_pid")
        )
        containment.remove_cgroup(group)
        log.warning("task %s: its shim vanished (%s processes left, killed)", files.task_id, killed)
        return JobExit(
            None, FailureReason.LOST, "The job's supervisor vanished without recording an exit"
        )
    reason = FailureReason(data["reason"]) if data.get("reason") else None
    return JobExit(data.get("return_code"), reason, data.get("error"), data.get("truncated") or {})


def shim_environment() -> dict[str, str]:
    """The shim's own environment: the allowlist only (no token, no secrets)."""
    return {k: v for k, v in os.environ.items() if k in ALLOWED or k.startswith("LC_")}


class Spawner(Protocol):
    """Something that starts a shim for a spec file: the warm zygote."""

    python: str

    def healthy(self) -> bool: ...

    async def spawn(self, spec_path: Path) -> int: ...


class DetachedRunner:
    """Starts every job under a detached shim; follows it, or adopts it after a restart."""

    def __init__(
        self,
        *,
        run_dir: Path,
        logs_dir: Path,
        max_log_bytes: int,
        zygote: Spawner | None = None,
        pace: Pace | None = None,
        job_user: JobUser | None = None,
    ) -> None:
        self.pace = pace
        self.job_user = job_user  # jobs and kernels run as its per-task uids (None: as the shim)
        self.run_dir = run_dir
        self.logs_dir = logs_dir
        self.max_log_bytes = max_log_bytes
        self.zygote = zygote

    def files(self, task_id: str) -> JobFiles:
        return JobFiles(self.run_dir, self.logs_dir, task_id)

    def forget(self, task_id: str) -> None:
        self.files(task_id).remove()

    async def start(self, spec: JobSpec, on_output: OutputCallback) -> DetachedHandle:
        files = self.files(spec.task_id)
        await asyncio.to_thread(self._write_spec, spec, files)
        offsets = {s: logfiles.log_size(self.logs_dir, spec.task_id, s) for s in STREAMS}
        pid, proc = await self._spawn(spec, files)
        log.info("task %s: shim pid %s: %s", spec.task_id, pid, " ".join(spec.argv))
        return DetachedHandle(
            files=files, pid=pid, on_output=on_output, offsets=offsets, proc=proc, pace=self.pace
        )

    async def was_started(self, task_id: str) -> bool:
        """Whether a shim ever started for ``task_id`` (a gateway may stop between marking a
        task running and starting its shim). A shim writes its state file first thing; one
        still starting up gets ``SHIM_START_S`` to do so."""
        files = self.files(task_id)
        for _ in range(int(SHIM_START_S / 0.1)):
            if files.state.exists() or files.exit.exists():
                return True
            if not files.spec.exists():
                return False
            await asyncio.sleep(0.1)
        return False

    def _write_spec(self, spec: JobSpec, files: JobFiles) -> None:
        files.remove()
        ShimSpec(
            task_id=spec.task_id,
            argv=spec.argv,
            cwd=str(spec.cwd),
            env=spec.env,
            stdout_path=str(files.log("stdout")),
            stderr_path=str(files.log("stderr")),
            state_path=str(files.state),
            exit_path=str(files.exit),
            timeout_s=spec.timeout_s,
            grace_s=spec.grace_s,
            max_log_bytes=self.max_log_bytes,
            user=self.job_user.for_task(spec.task_id).as_dict() if self.job_user else None,
        ).dump(files.spec)

    async def _spawn(
        self, spec: JobSpec, files: JobFiles
    ) -> tuple[int, subprocess.Popen[bytes] | None]:
        zygote = self.zygote
        if zygote is not None and spec.argv[0] == zygote.python and zygote.healthy():
            try:
                return await zygote.spawn(files.spec), None
            except OSError as exc:
                log.warning("task %s: zygote failed (%s); starting cold", spec.task_id, exc)
        proc = await asyncio.to_thread(_popen_shim, files)
        return proc.pid, proc

    def _adopt_offsets(self, task_id: str) -> dict[str, int]:
        """Where following resumes: a line start near each log's end (the latest progress
        is read from there; offsets stay those of the files)."""
        return {
            s: logfiles.tail_offset(
                self.logs_dir, task_id, s, 1 << 30, final=False, max_bytes=ADOPT_TAIL_BYTES
            )
            for s in STREAMS
        }

    async def adopt(self, *, task_id: str, on_output: OutputCallback) -> DetachedHandle | JobExit:
        """Follow a job a previous gateway started: its handle, or how it ended meanwhile."""
        files = self.files(task_id)
        state = await asyncio.to_thread(files.read, files.state) or {}
        pid = state.get("shim_pid")
        ours = isinstance(pid, int) and containment.start_time(pid) == state.get("shim_start")
        if not isinstance(pid, int) or not ours or not containment.is_alive(pid):
            return await asyncio.to_thread(read_exit, files)
        offsets = await asyncio.to_thread(self._adopt_offsets, task_id)
        log.info("task %s: adopted shim pid %s", task_id, pid)
        return DetachedHandle(
            files=files, pid=pid, on_output=on_output, offsets=offsets, pace=self.pace
        )


def _popen_shim(files: JobFiles) -> subprocess.Popen[bytes]:
    with open(files.shim_log, "ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "vrungpu_gateway.engine.shim", str(files.spec)],
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            start_new_session=True,  # not in the gateway's group: a signal to it spares jobs
            env=shim_environment(),
        )


class WarmSpawner:
    """Keeps one zygote up (``--preload``) and forks shims from it; restarts it when it dies.

    One zygote serves every slot: the fork gives each job its own ``CUDA_VISIBLE_DEVICES``
    before anything initialises CUDA, so a zygote per GPU would only multiply its memory.
    While it is down, ``healthy()`` is False and jobs start cold.
    """

    RESTART_DELAY_S = 2.0

    def __init__(self, *, python: str, preload: list[str], log_path: Path) -> None:
        self.python = python
        self.preload = preload
        self.log_path = log_path
        self._zygote: Any = None
        self._starting: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        from vrungpu_gateway.engine.zygote import Zygote  # forks; only loaded when warm

        with tempfile.TemporaryDirectory(prefix="vrungpu-") as short:  # AF_UNIX: 108 bytes
            try:
                self._zygote = await Zygote.start(
                    python=self.python,
                    socket_path=Path(short) / "zygote.sock",
                    preload=self.preload,
                    log_path=self.log_path,
                    env=shim_environment(),
                )
            except OSError as exc:
                log.error("warm start unavailable, jobs start cold: %s", exc)
                return
        log.info("zygote pid %s ready (preloaded: %s)", self._zygote.pid, self.preload or "-")
        _exit_future(self._zygote.pid).add_done_callback(lambda _: self._died())

    def _died(self) -> None:
        """The zygote exited: start another now rather than at the next job."""
        if not self._closed:
            self.healthy()

    def healthy(self) -> bool:
        if self._zygote is not None and self._zygote.healthy():
            return True
        if not self._closed and (self._starting is None or self._starting.done()):
            self._starting = asyncio.ensure_future(self._restart())
        return False

    async def _restart(self) -> None:
        if self._zygote is not None:
            await self._zygote.close(grace_s=1.0)
            self._zygote = None
        await asyncio.sleep(self.RESTART_DELAY_S)
        if not self._closed:
            log.warning("restarting the zygote")
            await self.start()

    async def spawn(self, spec_path: Path) -> int:
        if self._zygote is None:
            raise OSError("no zygote")
        try:
            return int(await self._zygote.spawn(spec_path))
        except OSError:
            self.healthy()  # it marked itself broken: schedules the restart
            raise

    @property
    def pid(self) -> int | None:
        return self._zygote.pid if self._zygote is not None else None

    async def close(self) -> None:
        self._closed = True
        if self._starting is not None:
            self._starting.cancel()
        if self._zygote is not None:
            await self._zygote.close(grace_s=2.0)

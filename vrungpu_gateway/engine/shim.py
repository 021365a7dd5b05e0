"""A job's supervisor process, the shim: it owns one job from start to exit, gateway or not.

The gateway writes a spec file and starts the shim (``python -m vrungpu_gateway.engine.shim
SPEC``, or a fork of the warm zygote). The shim, a child subreaper in its own session:
- starts the job (its own process group, in a cgroup where one can be made, as the job user
  when there is one: see ``engine/jobuser.py``), stdout and
  stderr on pipes that the shim copies to the task's log files, capped at ``max_log_bytes``
  per stream (past it a last line says so and output is dropped; the job keeps running);
- ends the job at its deadline or at SIGTERM (a cancel): SIGTERM to every job process, grace,
  then SIGKILL; once the job's main process exits, kills whatever it left behind;
- records where it runs in a state file at once, and the outcome in an exit file (written
  atomically) before it exits.
The gateway only reads these files and signals the shim, so it can stop, crash or be upgraded
while jobs run, and adopt them again at its next start.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from vrungpu_gateway.engine import containment, jobuser
from vrungpu_gateway.engine.launch import Launch, LaunchSpec, exit_code, launch_exec

READ_BYTES = 256 * 1024
DRAIN_AFTER_EXIT_S = 5.0  # how long leftovers may keep the pipes open once the job ended
POLL_S = 1.0


@dataclass(frozen=True)
class ShimSpec:
    task_id: str
    argv: list[str]
    cwd: str
    env: dict[str, str]
    stdout_path: str
    stderr_path: str
    state_path: str
    exit_path: str
    timeout_s: float | None
    grace_s: float
    max_log_bytes: int
    user: dict[str, Any] | None = None  # the job user (JobUser.as_dict); None: the shim's own

    @classmethod
    def load(cls, path: str | Path) -> ShimSpec:
        return cls(**json.loads(Path(path).read_text()))

    @property
    def job_user(self) -> jobuser.JobUser | None:
        return jobuser.JobUser(**self.user) if self.user else None

    def dump(self, path: Path) -> None:
        write_json_atomic(path, asdict(self))


def write_json_atomic(path: str | Path, data: dict[str, Any]) -> None:
    """Write and rename: a reader sees the old file or the whole new one, whoever crashes.

    No fsync: these files outlive a gateway or shim process, not the machine (a power loss
    ends the jobs they describe as well).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(data).encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def truncation_notice(limit_bytes: int) -> bytes:
    mb = limit_bytes / 2**20
    return (
        f"\n[vrungpu] log truncated at {mb:g} MB (--max-log-mb): later output of this stream is "
        "dropped; the job keeps running\n"
    ).encode()


class LogSink:
    """One stream's log file, appended unbuffered up to a byte cap."""

    def __init__(self, path: str, limit_bytes: int) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.size = os.fstat(self.fd).st_size
        self.limit = limit_bytes
        self.truncated = False

    def write(self, data: bytes) -> None:
        if self.truncated:
            return
        room = self.limit - self.size
        if len(data) > room:
            data = data[: max(0, room)] + truncation_notice(self.limit)
            self.truncated = True
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        self.size += len(data)

    def close(self) -> None:
        os.close(self.fd)


class Shim:
    def __init__(self, spec: ShimSpec) -> None:
        self.spec = spec
        self.group: Path | None = None
        self.job_pid: int | None = None
        self.cancelled = False
        self.reason: str | None = None  # "timeout" | "cancelled" once we end the job
        self.kill_at: float | None = None
        self.status: int | None = None  # the job leader's wait status
        self.sinks: dict[int, LogSink] = {}

    # -- the steps ----------------------------------------------------------------------------
    def run(self, launch: Launch) -> int:
        wake = self._signals()
        containment.become_subreaper()
        self.group = containment.create_cgroup(self.spec.task_id)
        try:
            self._write_state()
            pipes = self._start(launch)
            if pipes is None:
                return 0
            self._write_state()
            self._follow(pipes, wake)
            self._finish()
        finally:
            containment.remove_cgroup(self.group)
            jobuser.take_back(self.spec.cwd, self.spec.job_user)
        return 0

    def _signals(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGTERM, self._on_cancel)
        # Handlers, not SIG_IGN: an ignored signal would stay ignored in the exec'd job.
        for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, _wake_only)
        return wake_r

    def _on_cancel(self, _sig: int, _frame: FrameType | None) -> None:
        self.cancelled = True

    def _start(self, launch: Launch) -> dict[int, str] | None:
        spec = self.spec
        procs = str(self.group / "cgroup.procs") if self.group else None
        user = spec.job_user
        env = jobuser.environment(spec.env, user, spec.cwd)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            jobuser.hand_over(spec.cwd, user)
            self.job_pid = launch(LaunchSpec(spec.argv, spec.cwd, env, procs, user), out_w, err_w)
        except OSError as exc:
            for fd in (out_r, err_r):
                os.close(fd)
            self._write_exit(None, "spawn_error", _one_line(exc))
            return None
        finally:
            os.close(out_w)
            os.close(err_w)
        self.sinks = {
            out_r: LogSink(spec.stdout_path, spec.max_log_bytes),
            err_r: LogSink(spec.stderr_path, spec.max_log_bytes),
        }
        return {out_r: "stdout", err_r: "stderr"}

    def _follow(self, pipes: dict[int, str], wake: int) -> None:
        poller = select.poll()
        for fd in (*pipes, wake):
            poller.register(fd, select.POLLIN)
        open_fds = set(pipes)
        deadline = time.monotonic() + self.spec.timeout_s if self.spec.timeout_s else None
        drain_until: float | None = None
        while open_fds or self.status is None:
            for fd, _ in poller.poll(self._wait_ms(deadline, drain_until)):
                if fd == wake:
                    _drain(wake)
                elif not self._copy(fd):
                    poller.unregister(fd)
                    open_fds.discard(fd)
            self._reap()
            self._act(deadline)
            if self.status is not None and drain_until is None:
                if self._has_children() or containment.cgroup_members(self.group):
                    self._kill_all(signal.SIGKILL)  # what the job left behind dies with it
                drain_until = time.monotonic() + DRAIN_AFTER_EXIT_S
            if drain_until is not None and time.monotonic() > drain_until:
                break  # something unkillable holds a pipe: stop waiting for it
        for fd in pipes:
            os.close(fd)

    def _wait_ms(self, deadline: float | None, drain_until: float | None) -> int:
        now = time.monotonic()
        waits = [POLL_S]
        for at in (deadline if self.reason is None else None, self.kill_at, drain_until):
            if at is not None:
                waits.append(max(0.0, at - now))
        return int(min(waits) * 1000) + 1

    def _copy(self, fd: int) -> bool:
        try:
            data = os.read(fd, READ_BYTES)
        except BlockingIOError:
            return True
        if not data:
            return False
        self.sinks[fd].write(data)
        return True

    def _reap(self) -> None:
        """Reap every exited child (orphans of the job are ours: we are their subreaper)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.job_pid:
                self.status = status

    @staticmethod
    def _has_children() -> bool:
        """Whether any process is still ours to reap: as their subreaper, every descendant
        of the job that is left, orphaned or not, is a child of ours."""
        try:
            os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        return True

    def _act(self, deadline: float | None) -> None:
        now = time.monotonic()
        if self.reason is None and self.status is None:
            if self.cancelled:
                self._stop("cancelled")
            elif deadline is not None and now >= deadline:
                self._stop("timeout")
        if self.kill_at is not None and now >= self.kill_at:
            self._kill_all(signal.SIGKILL)
            self.kill_at = now + POLL_S  # again, for anything started meanwhile

    def _stop(self, reason: str) -> None:
        self.reason = reason
        self._kill_all(signal.SIGTERM)
        self.kill_at = time.monotonic() + self.spec.grace_s

    def _kill_all(self, sig: signal.Signals) -> None:
        pids = containment.job_processes(
            self.spec.task_id, shim_pid=os.getpid(), group=self.group, job_pgid=self.job_pid
        )
        containment.signal_all(pids, sig, self.group)

    def _finish(self) -> None:
        self._reap()
        left = 0
        user = self.spec.job_user  # a uid of the task's own: whatever runs as it is the job's
        if user is not None or self._has_children() or containment.cgroup_members(self.group):
            left = containment.kill_leftovers(
                self.spec.task_id,
                shim_pid=os.getpid(),
                group=self.group,
                job_pgid=self.job_pid,
                uid=user.uid if user else None,
            )
            self._reap()
        for sink in self.sinks.values():
            sink.close()
        code = exit_code(self.status) if self.status is not None else None
        error = None if left == 0 else f"{left} leftover process(es) killed at the end"
        self._write_exit(code, self.reason, error)

    # -- the files the gateway reads ----------------------------------------------------------
    def _write_state(self) -> None:
        pid = os.getpid()
        write_json_atomic(
            self.spec.state_path,
            {
                "shim_pid": pid,
                "shim_start": containment.start_time(pid),
                "job_pid": self.job_pid,
                "cgroup": str(self.group) if self.group else None,
            },
        )

    def _write_exit(self, code: int | None, reason: str | None, error: str | None) -> None:
        truncated = {
            stream: sink.truncated
            for stream, sink in zip(("stdout", "stderr"), self.sinks.values(), strict=False)
        }
        write_json_atomic(
            self.spec.exit_path,
            {
                "return_code": code,
                "reason": reason,
                "error": error,
                "truncated": truncated,
                "ended_at": time.time(),
            },
        )


def _wake_only(_sig: int, _frame: FrameType | None) -> None:
    """The wakeup fd already woke the poll; nothing else to do."""


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def run_shim(spec_path: str, *, launch: Launch = launch_exec) -> int:
    """Supervise the job described by ``spec_path`` until it ended; the shim's exit code."""
    return Shim(ShimSpec.load(spec_path)).run(launch)


if __name__ == "__main__":
    sys.exit(run_shim(sys.argv[1]))

"""How a job's first process is started inside its shim: the spec, and the exec launcher.

A launcher takes a ``LaunchSpec`` and the write ends of the job's stdout/stderr pipes and
returns the pid of a process that leads its own process group. ``launch_exec`` runs a fresh
interpreter (``--python``, or whenever no warm zygote is up); ``inprocess.launch_fork`` runs
the job in a fork of an interpreter that already imported the ``--preload`` modules.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from vrungpu_gateway.engine.jobuser import JobUser, drop


@dataclass(frozen=True)
class LaunchSpec:
    argv: list[str]  # [python, "-u", entry_point, *args]
    cwd: str
    env: dict[str, str]  # the complete job environment
    cgroup_procs: str | None = None  # the child writes "0" here first: it joins the job's cgroup
    user: JobUser | None = None  # then it becomes this user (None: stays the shim's)


Launch = Callable[[LaunchSpec, int, int], int]  # (spec, stdout fd, stderr fd) -> pid


def join_cgroup(procs_path: str | None) -> None:
    """Move the calling process into a cgroup (its future children follow it)."""
    if procs_path:
        with open(procs_path, "w") as fh:
            fh.write("0")


def enter_job(spec: LaunchSpec) -> None:
    """The job child's own steps before its code: its cgroup (while still privileged to
    write there), then the job user. Popen's ``user=`` would drop before ``preexec_fn``."""
    join_cgroup(spec.cgroup_procs)
    drop(spec.user)


def launch_exec(spec: LaunchSpec, stdout_fd: int, stderr_fd: int) -> int:
    """Start ``spec.argv`` as a new process leading its own group; raise OSError if it can't."""
    try:
        proc = subprocess.Popen(  # noqa: S603 - argv is the job's own command line
            spec.argv,
            cwd=spec.cwd,
            env=spec.env,
            stdin=subprocess.DEVNULL,
            stdout=stdout_fd,
            stderr=stderr_fd,
            process_group=0,
            preexec_fn=(lambda: enter_job(spec)) if spec.cgroup_procs or spec.user else None,
        )
    except (ValueError, TypeError) as exc:  # e.g. a NUL byte in an argument
        raise OSError(str(exc)) from exc
    except subprocess.SubprocessError as exc:  # the preexec step failed
        raise OSError(f"cannot start the job: {exc}") from exc
    pid = proc.pid
    proc.returncode = 0  # the shim reaps it with os.waitpid; keep Popen from doing so
    return pid


def exit_code(status: int) -> int:
    """A wait status as Popen reports it: the exit code, or minus the signal number."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)

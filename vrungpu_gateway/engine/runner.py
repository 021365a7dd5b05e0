"""The runner seam: start a job -> a handle with pid, output, wait and kill.

``LocalProcessRunner`` spawns a plain process per job in its own session. A warm per-GPU
worker or a Ray backend can replace it by implementing ``Runner`` and ``JobHandle``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

OutputCallback = Callable[[str, bytes], None]  # (stream name, raw chunk)
READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class JobSpec:
    task_id: str
    argv: list[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)


class JobHandle(Protocol):
    pid: int

    async def wait(self) -> int:
        """The exit code (negative for a signal) once the job ended and its output drained."""
        ...

    async def kill(self, *, grace_s: float) -> None:
        """SIGTERM the job's whole process group, then SIGKILL after ``grace_s``."""
        ...


class Runner(Protocol):
    async def start(self, spec: JobSpec, on_output: OutputCallback) -> JobHandle:
        """Start the job; raise OSError when it cannot be spawned."""
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


class LocalProcessHandle:
    """One job process (the leader of its own session) and the readers of its pipes."""

    def __init__(self, proc: asyncio.subprocess.Process, on_output: OutputCallback) -> None:
        self._proc = proc
        self.pid: int = proc.pid
        self._readers = [
            asyncio.create_task(self._pump("stdout", proc.stdout, on_output)),
            asyncio.create_task(self._pump("stderr", proc.stderr, on_output)),
        ]

    @staticmethod
    async def _pump(
        name: str, pipe: asyncio.StreamReader | None, on_output: OutputCallback
    ) -> None:
        if pipe is None:
            return
        while chunk := await pipe.read(READ_CHUNK):
            on_output(name, chunk)

    async def wait(self) -> int:
        code = await self._proc.wait()
        # The leader is gone: end whatever it left behind in its group (as Slurm does), so
        # no orphan keeps a GPU or holds our pipes open, then drain what is left to read.
        signal_group(self.pid, signal.SIGKILL)
        await asyncio.gather(*self._readers, return_exceptions=True)
        return code

    async def kill(self, *, grace_s: float) -> None:
        if not signal_group(self.pid, signal.SIGTERM):
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._proc.wait()), timeout=grace_s)
        except TimeoutError:
            log.info("pid %s ignored SIGTERM for %.1fs: SIGKILL", self.pid, grace_s)
        # Children that outlive the leader die with the group either way.
        signal_group(self.pid, signal.SIGKILL)


class LocalProcessRunner:
    """Spawns each job as a fresh process in its own session (process group)."""

    async def start(self, spec: JobSpec, on_output: OutputCallback) -> JobHandle:
        proc = await asyncio.create_subprocess_exec(
            *spec.argv,
            cwd=str(spec.cwd),
            env=spec.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        log.info("task %s: started pid %s: %s", spec.task_id, proc.pid, " ".join(spec.argv))
        return LocalProcessHandle(proc, on_output)

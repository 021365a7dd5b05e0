"""One job's supervisor: owns its process from start to exit, its output and its deadline."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vrungpu_gateway.engine.logs import Line, OutputStream, log_path
from vrungpu_gateway.engine.progress import Progress
from vrungpu_gateway.engine.runner import JobHandle, JobSpec, Runner
from vrungpu_gateway.protocol import STREAMS, FailureReason

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    return_code: int | None
    failure_reason: FailureReason | None
    error: str | None
    last_stderr: str | None = None


@dataclass
class Supervisor:
    """Runs ``spec`` on ``runner``; ``cancel()`` and the timeout end it through its group."""

    spec: JobSpec
    runner: Runner
    logs_dir: Path
    timeout_s: float
    grace_s: float
    on_line: Callable[[Line], None]
    on_progress: Callable[[Progress], None]
    on_started: Callable[[int], None]
    _cancel: asyncio.Event = field(default_factory=asyncio.Event)
    _last_stderr: str | None = None

    def cancel(self) -> None:
        self._cancel.set()

    async def run(self) -> Outcome:
        streams = {
            name: OutputStream(
                log_path(self.logs_dir, self.spec.task_id, name), name, self._line, self.on_progress
            )
            for name in STREAMS
        }
        try:
            handle = await self.runner.start(self.spec, lambda s, chunk: streams[s].feed(chunk))
        except OSError as exc:
            log.warning("task %s: cannot start: %s", self.spec.task_id, exc)
            for stream in streams.values():
                stream.close()
            return Outcome(None, FailureReason.SPAWN_ERROR, f"Could not start the job: {exc}")
        self.on_started(handle.pid)
        try:
            return await self._follow(handle)
        finally:
            for stream in streams.values():
                stream.close()

    def _line(self, line: Line) -> None:
        if line.stream == "stderr" and line.text.strip():
            self._last_stderr = line.text.strip()
        self.on_line(line)

    async def _follow(self, handle: JobHandle) -> Outcome:
        exited = asyncio.ensure_future(handle.wait())
        cancelled = asyncio.ensure_future(self._cancel.wait())
        try:
            await asyncio.wait(
                {exited, cancelled}, timeout=self.timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            cancelled.cancel()
        if exited.done():
            code = exited.result()
            if code == 0:
                return Outcome(0, None, None)
            detail = f": {self._last_stderr}" if self._last_stderr else ""
            return Outcome(code, FailureReason.EXIT_CODE, f"Exit code {code}{detail}")
        reason = FailureReason.CANCELLED if self._cancel.is_set() else FailureReason.TIMEOUT
        log.info("task %s: %s, stopping pid %s", self.spec.task_id, reason.value, handle.pid)
        await handle.kill(grace_s=self.grace_s)
        code = await exited
        if reason is FailureReason.CANCELLED:
            return Outcome(code, reason, "Cancelled by request")
        return Outcome(code, reason, f"Timeout after {format_seconds(self.timeout_s)} seconds")


def format_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"

"""One job's supervisor on the gateway side: starts or adopts it, follows its output and
progress, applies cancel (and the deadline, where the runner does not), and says how it ended."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from vrungpu_gateway.engine.logs import Line, OutputStream, log_path
from vrungpu_gateway.engine.progress import Progress
from vrungpu_gateway.engine.runner import JobExit, JobHandle, JobSpec, OutputCallback, Runner
from vrungpu_gateway.protocol import STREAMS, FailureReason

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    return_code: int | None
    failure_reason: FailureReason | None
    error: str | None
    truncated: dict[str, bool] = field(default_factory=dict)


@dataclass
class Supervisor:
    """Runs ``spec`` on ``runner``; ``cancel()`` (and the timeout) end it through the runner."""

    spec: JobSpec
    runner: Runner
    logs_dir: Path
    timeout_s: float
    grace_s: float
    on_lines: Callable[[list[Line]], None]
    on_progress: Callable[[Progress], None]
    on_started: Callable[[int], None]
    adopt: Callable[[OutputCallback], Awaitable[JobHandle | JobExit]] | None = None
    _cancel: asyncio.Event = field(default_factory=asyncio.Event)
    _last_stderr: str | None = None
    _handle: JobHandle | None = None

    def cancel(self) -> None:
        self._cancel.set()

    async def run(self) -> Outcome:
        streams: dict[str, OutputStream] = {}
        try:
            started = await self._begin(lambda s, chunk: streams[s].feed(chunk))
        except OSError as exc:
            log.warning("task %s: cannot start: %s", self.spec.task_id, exc)
            return self._outcome(JobExit(None, FailureReason.SPAWN_ERROR, str(exc)))
        if not hasattr(started, "wait"):
            return self._outcome(started)  # type: ignore[arg-type]  # ended before adoption
        handle: JobHandle = started  # type: ignore[assignment]
        self._handle = handle
        offsets = handle.log_offsets
        for name in STREAMS:
            streams[name] = OutputStream(
                log_path(self.logs_dir, self.spec.task_id, name),
                name,
                self._lines,
                self.on_progress,
                offset=None if offsets is None else offsets[name],
            )
        self.on_started(handle.pid)
        try:
            return self._outcome(await self._follow(handle))
        finally:
            for stream in streams.values():
                stream.close()

    async def _begin(self, on_output: OutputCallback) -> JobHandle | JobExit:
        if self.adopt is not None:
            return await self.adopt(on_output)
        return await self.runner.start(self.spec, on_output)

    def detach(self) -> None:
        """Stop following without touching the job (the gateway leaves it running)."""
        detach = getattr(self._handle, "detach", None)
        if detach is not None:
            detach()

    def _lines(self, lines: list[Line]) -> None:
        for line in reversed(lines):
            if line.stream == "stderr" and line.text.strip():
                self._last_stderr = line.text.strip()
                break
        self.on_lines(lines)

    async def _follow(self, handle: JobHandle) -> JobExit:
        exited = asyncio.ensure_future(handle.wait())
        cancelled = asyncio.ensure_future(self._cancel.wait())
        timeout = None if handle.owns_deadline else self.timeout_s
        try:
            await asyncio.wait(
                {exited, cancelled}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            cancelled.cancel()
        if exited.done():
            return exited.result()
        reason = FailureReason.CANCELLED if self._cancel.is_set() else FailureReason.TIMEOUT
        log.info("task %s: %s, stopping pid %s", self.spec.task_id, reason.value, handle.pid)
        await handle.kill(grace_s=self.grace_s)
        ended = await exited
        if handle.owns_deadline or ended.reason is not None:
            return ended
        return JobExit(ended.return_code, reason, ended.error, ended.truncated)

    def _outcome(self, ended: JobExit) -> Outcome:
        code, reason = ended.return_code, ended.reason
        if reason is FailureReason.SPAWN_ERROR:
            return Outcome(None, reason, f"Could not start the job: {ended.error}")
        if reason is FailureReason.TIMEOUT:
            error = f"Timeout after {format_seconds(self.timeout_s)} seconds"
            return Outcome(code, reason, error, ended.truncated)
        if reason is FailureReason.CANCELLED:
            return Outcome(code, reason, "Cancelled by request", ended.truncated)
        if reason is not None:
            return Outcome(code, reason, ended.error, ended.truncated)
        if code == 0:
            return Outcome(0, None, None, ended.truncated)
        detail = f": {self._last_stderr}" if self._last_stderr else ""
        return Outcome(code, FailureReason.EXIT_CODE, f"Exit code {code}{detail}", ended.truncated)


def format_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"

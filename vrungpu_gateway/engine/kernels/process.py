"""Kernel processes: started, signalled and adopted through the job runtime's shims.

A kernel is a job to the runtime: ``DetachedRunner`` starts ``python -u kernel_entry.py -f
CONNECTION_FILE`` under a shim (forked from the warm zygote when there is one), with the job
environment (allowlist, ``CUDA_VISIBLE_DEVICES``), cwd ``data/workspaces/<kernel_id>/``, its
output in ``data/logs/<kernel_id>.{stdout,stderr}.log``, contained and detached, and adopted
again after a gateway restart. The connection file (ports and key, written by jupyter_client)
lives beside the shim's files: ``data/run/<kernel_id>.kernel.json``, readable by the kernel
alone (the job user's when there is one: ``engine/jobuser.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
from pathlib import Path

from jupyter_client.connect import write_connection_file

from vrungpu_gateway.engine import kernel_entry
from vrungpu_gateway.engine import logs as logfiles
from vrungpu_gateway.engine.environment import job_environment
from vrungpu_gateway.engine.layout import DataLayout
from vrungpu_gateway.engine.runner import (
    DetachedHandle,
    DetachedRunner,
    JobExit,
    JobSpec,
    OutputCallback,
)

log = logging.getLogger(__name__)

ENTRY = str(Path(kernel_entry.__file__).resolve())


class KernelLauncher:
    def __init__(
        self, *, runner: DetachedRunner, layout: DataLayout, python: str, grace_s: float
    ) -> None:
        self.runner = runner
        self.layout = layout
        self.python = python
        self.grace_s = grace_s

    def argv(self, connection_file: str = "{connection_file}") -> list[str]:
        return [self.python, "-u", ENTRY, "-f", connection_file]

    def connection_file(self, kernel_id: str) -> Path:
        return self.layout.run / f"{kernel_id}.kernel.json"

    def new_connection_file(self, kernel_id: str) -> str:
        """Free loopback ports and a fresh key, written where the kernel will read them."""
        path, _ = write_connection_file(
            str(self.connection_file(kernel_id)),
            ip="127.0.0.1",
            key=secrets.token_hex(32).encode(),
            kernel_name=kernel_id,
        )
        user = self.runner.job_user
        if user is not None:  # the kernel reads it after its drop to its own uid
            own = user.for_task(kernel_id)
            os.chown(path, own.uid, own.gid)
        return path

    async def start(
        self,
        *,
        kernel_id: str,
        connection_file: str,
        gpu_ids: tuple[int, ...],
        user_env: dict[str, str],
    ) -> DetachedHandle:
        """Start the kernel process under its shim; OSError when it cannot start at all."""
        workspace = self.layout.workspace(kernel_id)
        await asyncio.to_thread(workspace.mkdir, parents=True, exist_ok=True)
        env = job_environment(
            task_id=kernel_id, workspace=str(workspace), gpu_ids=gpu_ids, user_env=user_env
        )
        env["VRUNGPU_KERNEL_ID"] = kernel_id
        spec = JobSpec(
            kernel_id,
            self.argv(connection_file),
            workspace,
            env,
            timeout_s=None,
            grace_s=self.grace_s,
        )
        return await self.runner.start(spec, self._log_output(kernel_id))

    async def adopt(self, *, kernel_id: str) -> DetachedHandle | JobExit:
        return await self.runner.adopt(task_id=kernel_id, on_output=self._log_output(kernel_id))

    def interrupt(self, *, kernel_id: str) -> bool:
        """SIGINT to the kernel's process group, as jupyter_client's signal mode does."""
        files = self.runner.files(kernel_id)
        job_pid = (files.read(files.state) or {}).get("job_pid")
        if not job_pid:
            return False
        try:
            os.killpg(job_pid, signal.SIGINT)
        except ProcessLookupError:
            return False
        return True

    async def stop(self, handle: DetachedHandle) -> JobExit:
        """End the process (SIGTERM, grace, SIGKILL: the shim does it) and wait for it."""
        await handle.kill(grace_s=self.grace_s)
        return await handle.wait()

    def stderr_tail(self, kernel_id: str) -> str:
        """The last line the kernel process wrote to stderr (why a start failed)."""
        text, _ = logfiles.read_tail(self.layout.logs, kernel_id, "stderr", max_bytes=4096)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def forget(self, kernel_id: str) -> None:
        """Remove the files of an ended kernel (its logs and workspace stay)."""
        self.runner.files(kernel_id).remove()
        with contextlib.suppress(OSError):
            self.connection_file(kernel_id).unlink()

    def _log_output(self, kernel_id: str) -> OutputCallback:
        def output(stream: str, chunk: bytes) -> None:
            # Cell output travels on iopub; what reaches the process's own stdio is the
            # kernel's own messages (and C-level writes), kept in its log files.
            log.debug("kernel %s %s: %r", kernel_id, stream, chunk[:200])

        return output

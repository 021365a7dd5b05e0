"""Remote kernels under ``--backend ray``: each kernel process under a detached, named Ray actor.

``KernelActor`` (named ``kernel-<kernel_id>`` in the ``vrungpu`` namespace, ``num_gpus`` = the
kernel's GPUs) starts the same kernel entry a local kernel runs (``engine/kernel_entry.py``) on
its node, with ``CUDA_VISIBLE_DEVICES`` as Ray gave the actor and a connection file whose ip is
the node's and whose ports are free there (the key is the gateway's). The gateway writes the
connection info it gets back to the kernel's local connection file and talks ZMQ to the node
exactly as to a local kernel. Interrupt, restart (a new process under the same actor: same node,
GPUs and ports), shutdown and cull go through the actor; the actor lives until the kernel ends
(``forget``), so a restarted gateway adopts the kernel by the actor's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from vrungpu_gateway.engine.environment import job_environment
from vrungpu_gateway.engine.kernels.process import KernelLauncher
from vrungpu_gateway.engine.layout import DataLayout
from vrungpu_gateway.engine.ray_actor import KernelActor
from vrungpu_gateway.engine.runner import DetachedRunner, JobExit
from vrungpu_gateway.protocol import FailureReason

log = logging.getLogger(__name__)

NAMESPACE = "vrungpu"
POLL_INTERVAL_S = 0.2  # how often a kernel's actor is asked whether its process still runs
PLACE_TIMEOUT_S = 120.0  # the scheduler gave the slot: Ray should place the actor at once
CALL_TIMEOUT_S = 10.0


def actor_name(kernel_id: str) -> str:
    return f"kernel-{kernel_id}"


class RayKernelHandle:
    """Follows one kernel process through its actor (``DetachedHandle``'s part kernels use)."""

    def __init__(self, *, ray: Any, actor: Any, kernel_id: str, pid: int) -> None:
        self._ray = ray
        self._actor = actor
        self.kernel_id = kernel_id
        self.pid = pid  # on the actor's node
        self._poller = asyncio.ensure_future(self._poll())

    async def _poll(self) -> JobExit:
        try:
            while (code := await self._actor.poll.remote()) is None:
                await asyncio.sleep(POLL_INTERVAL_S)
        except self._ray.exceptions.RayError as exc:
            error = f"its Ray actor died: {str(exc).splitlines()[0]}"
            return JobExit(None, FailureReason.LOST, error)
        return JobExit(int(code))

    async def wait(self) -> JobExit:
        return await asyncio.shield(self._poller)

    async def kill(self, *, grace_s: float) -> None:
        try:
            await self._actor.kill.remote(grace_s)
        except self._ray.exceptions.RayError as exc:
            log.warning("kernel %s: kill through its actor failed: %s", self.kernel_id, exc)

    def detach(self) -> None:
        self._poller.cancel()


class RayKernelLauncher(KernelLauncher):
    """``KernelLauncher`` with the process on a Ray node (the manager cannot tell)."""

    def __init__(
        self,
        *,
        ray: Any,
        runner: DetachedRunner,
        layout: DataLayout,
        python: str,
        grace_s: float,
    ) -> None:
        super().__init__(runner=runner, layout=layout, python=python, grace_s=grace_s)
        self.ray = ray
        self._actor_class = ray.remote(KernelActor)

    def new_connection_file(self, kernel_id: str) -> str:
        """Only the path: the node picks the ports; ``start`` writes the file."""
        return str(self.connection_file(kernel_id))

    async def start(  # type: ignore[override]
        self,
        *,
        kernel_id: str,
        connection_file: str,
        gpu_ids: tuple[int, ...],
        user_env: dict[str, str],
    ) -> RayKernelHandle:
        """Start (or restart) the kernel under its actor; OSError when it cannot start."""
        actor = await asyncio.to_thread(self._actor, kernel_id)
        if actor is None:
            actor = self._actor_class.options(
                name=actor_name(kernel_id),
                namespace=NAMESPACE,
                lifetime="detached",
                num_gpus=len(gpu_ids),
                num_cpus=0 if gpu_ids else 1,
                max_concurrency=4,  # poll and interrupt while a kill waits
                max_restarts=0,
            ).remote(kernel_id)
        env = job_environment(task_id=kernel_id, workspace="", gpu_ids=gpu_ids, user_env=user_env)
        env["VRUNGPU_KERNEL_ID"] = kernel_id
        user = self.runner.job_user
        spec = {
            "argv": self.argv(),
            "env": env,
            "key": secrets.token_hex(32),
            # where the node's Ray workers run as root
            "user": user.for_task(kernel_id).as_dict() if user else None,
        }
        try:
            info = await asyncio.wait_for(actor.start.remote(spec), PLACE_TIMEOUT_S)
        except (TimeoutError, self.ray.exceptions.RayError) as exc:
            await asyncio.to_thread(self.forget, kernel_id)
            raise OSError(f"the kernel's Ray actor did not start it: {exc}") from exc
        if info.get("error"):
            raise OSError(info["error"])
        await asyncio.to_thread(_write_private, Path(connection_file), info["connection"])
        log.info("kernel %s: Ray actor on node %s (%s), pid %s", kernel_id, info["node_id"][:12],
                 info["connection"]["ip"], info["pid"])  # fmt: skip
        return RayKernelHandle(ray=self.ray, actor=actor, kernel_id=kernel_id, pid=info["pid"])

    async def adopt(self, *, kernel_id: str) -> RayKernelHandle | JobExit:  # type: ignore[override]
        actor = await asyncio.to_thread(self._actor, kernel_id)
        try:
            info = await asyncio.wait_for(actor.info.remote(), CALL_TIMEOUT_S) if actor else None
        except (TimeoutError, self.ray.exceptions.RayError):
            info = None
        if not info or not info["alive"]:
            return JobExit(None, FailureReason.LOST, "the kernel's Ray actor is gone")
        log.info("kernel %s: adopted its Ray actor (pid %s)", kernel_id, info["pid"])
        return RayKernelHandle(ray=self.ray, actor=actor, kernel_id=kernel_id, pid=info["pid"])

    def interrupt(self, *, kernel_id: str) -> bool:
        actor = self._actor(kernel_id)
        if actor is None:
            return False
        try:
            return bool(self.ray.get(actor.interrupt.remote(), timeout=CALL_TIMEOUT_S))
        except Exception:  # a dead actor or a timeout: nothing to interrupt
            return False

    def stderr_tail(self, kernel_id: str) -> str:
        actor = self._actor(kernel_id)
        with contextlib.suppress(Exception):
            if actor is not None:
                return str(self.ray.get(actor.stderr_tail.remote(), timeout=CALL_TIMEOUT_S))
        return ""

    def forget(self, kernel_id: str) -> None:
        """End the kernel's actor (and what is left of its process) and the local file."""
        actor = self._actor(kernel_id)
        if actor is not None:
            with contextlib.suppress(Exception):
                self.ray.get(actor.close.remote(), timeout=CALL_TIMEOUT_S)
            with contextlib.suppress(Exception):
                self.ray.kill(actor)
        with contextlib.suppress(OSError):
            self.connection_file(kernel_id).unlink()

    def _actor(self, kernel_id: str) -> Any | None:
        try:
            return self.ray.get_actor(actor_name(kernel_id), namespace=NAMESPACE)
        except ValueError:
            return None


def _write_private(path: Path, connection: dict[str, Any]) -> None:
    """The connection info as jupyter_client reads it, readable by the gateway alone."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(connection, file, indent=2)

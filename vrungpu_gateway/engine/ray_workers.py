"""Warm model workers under ``--backend ray``: each worker process under a Ray actor.

``RayWorkers.spawn`` is the pool's ``SpawnWorker`` (``engine/workers.py`` cannot tell): the
worker's ``ModelWorkerActor`` (``engine/ray_actor.py``) asks Ray for the GPUs of the slot the
scheduler gave the worker (``num_gpus``; a CPU worker takes one CPU), the registered model folder
travels to that node as a zip, and the same ``worker_main.py`` a local worker runs loads it
there once. Each request's input file goes to the node as bytes and its result file comes back
as bytes into the inference task's workspace, so the task, its log and its ``result`` are those
of a local request. The actors are not detached: a worker lives no longer than the gateway
that started it (a local worker does not either), and the next request starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from pathlib import Path
from typing import Any

from vrungpu_gateway.engine.jobuser import JobUser
from vrungpu_gateway.engine.ray_actor import ModelWorkerActor, zip_dir
from vrungpu_gateway.engine.worker_process import WorkerGone

log = logging.getLogger(__name__)

PLACE_TIMEOUT_S = 600.0  # the scheduler gave the slot: Ray places the actor as soon as it can
CALL_TIMEOUT_S = 30.0


class RayWorkers:
    """Starts model workers on the cluster (the pool's ``spawn``)."""

    def __init__(self, ray: Any) -> None:
        self.ray = ray
        self._actor_class = ray.remote(ModelWorkerActor)

    async def spawn(
        self,
        *,
        python: str,
        model_dir: Path,
        artifact: str,
        env: dict[str, str],
        log_path: Path,
        user: JobUser | None = None,
    ) -> RayWorkerProcess:
        """Start a worker for ``model_dir`` on a node with its GPUs (as ``user`` where the
        node's Ray workers run as root); OSError when it cannot."""
        del log_path  # the worker's log stays on its node, beside the actor
        gpus = len([i for i in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if i])
        worker_id = env.get("VRUNGPU_TASK_ID") or uuid.uuid4().hex
        actor = self._actor_class.options(
            num_gpus=gpus,
            num_cpus=0 if gpus else 1,
            max_concurrency=4,  # exit_detail and stop while a predict waits
            max_restarts=0,
        ).remote(worker_id)
        try:
            return await self._start(actor, worker_id, model_dir, artifact, env, python, user)
        except BaseException:  # cancelled while Ray placed it, or it failed: no actor stays
            _kill(self.ray, actor)
            raise

    async def _start(
        self,
        actor: Any,
        worker_id: str,
        model_dir: Path,
        artifact: str,
        env: dict[str, str],
        python: str,
        user: JobUser | None,
    ) -> RayWorkerProcess:
        model_zip = await asyncio.to_thread(zip_dir, model_dir)
        spec = {
            "python": python,
            "artifact": artifact,
            "env": env,
            "user": user.as_dict() if user else None,
        }
        try:
            info = await asyncio.wait_for(actor.start.remote(spec, model_zip), PLACE_TIMEOUT_S)
        except (TimeoutError, self.ray.exceptions.RayError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise OSError(f"the model worker's Ray actor did not start: {first}") from exc
        if info.get("error"):
            raise OSError(info["error"])
        log.info("%s: Ray actor on node %s, pid %s", worker_id, info["node_id"][:12], info["pid"])
        return RayWorkerProcess(self.ray, actor, pid=info["pid"])


class RayWorkerProcess:
    """One worker on its node, driven as a local ``WorkerProcess`` is (``ModelProcess``)."""

    def __init__(self, ray: Any, actor: Any, *, pid: int) -> None:
        self._ray = ray
        self._actor = actor
        self.pid = pid  # on the actor's node

    async def handshake(self) -> dict[str, Any]:
        hello = await self._call(self._actor.handshake.remote(), None)
        if hello is None:
            raise WorkerGone(await self._exit_detail("it closed its socket"))
        return dict(hello)

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one request's input to the node; its result lands where ``output`` says."""
        input_json = await asyncio.to_thread(Path(message["input"]).read_bytes)
        reply, result = await self._call(
            self._actor.predict.remote(message["id"], input_json), None
        )
        if reply is None:
            raise WorkerGone(await self._exit_detail("it closed its socket"))
        if result:
            await asyncio.to_thread(Path(message["output"]).write_bytes, result)
        return dict(reply)

    async def _call(self, ref: Any, timeout_s: float | None) -> Any:
        try:
            return await asyncio.wait_for(ref, timeout_s)
        except (TimeoutError, self._ray.exceptions.RayError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise WorkerGone(f"the model worker's Ray actor failed: {first}") from None

    async def _exit_detail(self, fallback: str) -> str:
        try:
            code, last = await self._call(self._actor.exit_detail.remote(), CALL_TIMEOUT_S)
        except WorkerGone as exc:
            return str(exc)
        what = f"exited with code {code}" if code is not None else fallback
        return f"the model worker (pid {self.pid}, on Ray) {what}" + (f": {last}" if last else "")

    async def stop(self, *, grace_s: float, kill: bool) -> int | None:
        """End the worker as a local one ends, then its actor."""
        code = None
        with contextlib.suppress(WorkerGone):
            code = await self._call(self._actor.stop.remote(grace_s, kill), 3 * grace_s + 10)
        with contextlib.suppress(WorkerGone):
            await self._call(self._actor.close.remote(), CALL_TIMEOUT_S)
        _kill(self._ray, self._actor)
        log.info("worker pid %s (on Ray): exited with %s", self.pid, code)
        return code


def _kill(ray: Any, actor: Any) -> None:
    with contextlib.suppress(Exception):
        ray.kill(actor)

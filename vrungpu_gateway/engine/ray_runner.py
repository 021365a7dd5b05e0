"""The Ray backend (``--backend ray``): every job under a detached, named Ray actor.

``RayRunner`` implements the same backend seam as ``DetachedRunner`` (``engine/runner.py``:
start, was_started, adopt, forget). A job's actor (``engine/ray_actor.py``, named
``job-<task_id>`` in the ``vrungpu`` namespace) asks Ray for the job's GPUs (``num_gpus``; a CPU
job takes one CPU), so Ray places it on a node that has them and sets its
``CUDA_VISIBLE_DEVICES``. The workspace travels to the node as a zip; the handle polls the
actor for output at byte offsets and hands it on as a local job's output is handed on (the
supervisor appends it to the gateway's log files, so offsets, WebSockets and progress are the
same); when the job ends, its workspace comes back for ``/task/{id}/files`` and models, and
the actor is killed. Actors outlive the gateway, so a restarted gateway adopts their jobs.
Our scheduler stays in front of Ray as the admission control (its GPU slots are the cluster's
GPUs); Ray picks which physical GPU, so a task's ``gpu_ids`` are slots, and the job's
``CUDA_VISIBLE_DEVICES`` is what Ray gave its actor.

Remote kernels and warm model workers run under Ray actors too (``engine/ray_kernels.py``,
``engine/ray_workers.py``). ``--job-user`` applies on a node whose Ray workers run as root
(elsewhere a job runs as its Ray worker's user). Not on Ray (yet): a job's own environment
(requirements) is built on the gateway's host and used only where that path exists on the
node; a node's copy of a job's output is not capped (the gateway's copy is, --max-log-mb).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vrungpu_gateway.engine import logs as logfiles
from vrungpu_gateway.engine.jobuser import JobUser
from vrungpu_gateway.engine.ray_actor import JobActor, unzip_into, zip_dir
from vrungpu_gateway.engine.runner import JobExit, JobSpec, OutputCallback
from vrungpu_gateway.engine.shim import truncation_notice
from vrungpu_gateway.protocol import STREAMS, FailureReason

log = logging.getLogger(__name__)

NAMESPACE = "vrungpu"
POLL_INTERVAL_S = 0.1  # how often a running job's actor is asked for new output
READ_CHUNK = 256 * 1024  # per stream and poll
PROBE_TIMEOUT_S = 5.0
PLACE_TIMEOUT_S = 600.0  # a job's actor not placed and started by then: a spawn error
START_WAIT_S = 5.0  # a job not started by then is followed (and cancellable) while Ray places it
INFO_TIMEOUT_S = 30.0  # an actor found at a restart that does not answer (never placed)


class RayUnavailable(ValueError):
    """The ray package is missing or the cluster cannot be reached (one line: exit 2)."""


def connect(address: str) -> Any:
    """``ray.init`` on ``address`` in our namespace; the ``ray`` module."""
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable(
            "--backend ray needs the ray package: pip install 'vrungpu[gateway,ray]'"
        ) from exc
    _probe(address)
    try:
        ray.init(
            address=address,
            namespace=NAMESPACE,
            logging_level=logging.ERROR,
            log_to_driver=False,
            configure_logging=False,
        )
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RayUnavailable(f"cannot reach the Ray cluster at {address}: {first}") from exc
    return ray


def _probe(address: str) -> None:
    """Fail fast on a cluster that does not answer: ``ray.init`` retries for minutes."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=PROBE_TIMEOUT_S):
            pass
    except (OSError, ValueError) as exc:
        raise RayUnavailable(f"cannot reach the Ray cluster at {address}: {exc}") from exc


def actor_name(task_id: str) -> str:
    return f"job-{task_id}"


def _gpu_count(spec: JobSpec) -> int:
    """The GPUs the scheduler gave the job (passed in its environment, as to a local job)."""
    return len([i for i in spec.env.get("CUDA_VISIBLE_DEVICES", "").split(",") if i])


class RayHandle:
    """Follows one job's actor: polls its output and exit, fetches its workspace at the end."""

    owns_deadline = False  # the supervisor applies the timeout through kill()
    log_offsets: dict[str, int] | None = None  # the supervisor writes the gateway's log files

    def __init__(
        self,
        *,
        ray: Any,
        actor: Any,
        task_id: str,
        pid: int,
        workspace: Path,
        on_output: OutputCallback,
        offsets: dict[str, int],
        max_log_bytes: int,
        starting: asyncio.Future[dict[str, Any]] | None = None,
    ) -> None:
        self._starting = starting  # the job's start, while Ray still places its actor
        self._killed = False
        self._max_log_bytes = max_log_bytes
        self._ray = ray
        self._actor = actor
        self.task_id = task_id
        self.pid = pid  # on the actor's node
        self.workspace = workspace
        self._on_output = on_output
        self._read_at = dict(offsets)
        self._poller = asyncio.ensure_future(self._poll())

    async def _poll(self) -> int | None:
        """Hand on output until the job exited and all of it was delivered; its exit code."""
        if self._starting is not None:
            self.pid = int((await self._starting)["pid"])
        while True:
            chunks, code = await self._actor.poll.remote(self._read_at, READ_CHUNK)
            got = False
            for stream in STREAMS:
                data = chunks.get(stream, b"")
                if data:
                    self._read_at[stream] += len(data)
                    self._on_output(stream, data)
                    got = True
            if code is not None and not got:
                return int(code)
            if not got:
                await asyncio.sleep(POLL_INTERVAL_S)

    async def wait(self) -> JobExit:
        try:
            code = await asyncio.shield(self._poller)
        except OSError as exc:  # it never started: killed while Ray placed it, or failed
            return (
                JobExit(None)
                if self._killed
                else JobExit(None, FailureReason.SPAWN_ERROR, str(exc))
            )
        except self._ray.exceptions.RayError as exc:
            log.warning("task %s: its Ray actor failed: %s", self.task_id, exc)
            await self._end_actor()
            error = f"The Ray actor running the job died: {str(exc).splitlines()[0]}"
            return JobExit(None, FailureReason.LOST, error)
        await self._fetch_workspace()
        await self._end_actor()
        truncated = {s: at > self._max_log_bytes for s, at in self._read_at.items()}
        return JobExit(code, truncated=truncated)

    async def _fetch_workspace(self) -> None:
        try:
            data = await self._actor.workspace_zip.remote()
            await asyncio.to_thread(unzip_into, data, self.workspace)
        except Exception as exc:  # the job's exit stands; its files may be missing
            log.warning("task %s: could not fetch its workspace: %s", self.task_id, exc)

    async def _end_actor(self) -> None:
        with contextlib.suppress(Exception):
            await self._actor.close.remote()
        with contextlib.suppress(Exception):
            self._ray.kill(self._actor)

    async def kill(self, *, grace_s: float) -> None:
        """SIGTERM to the job's group on its node, SIGKILL after ``grace_s``."""
        if self._starting is not None and not self._starting.done():
            self._killed = True  # not placed yet: the actor goes, and its start fails
            await asyncio.to_thread(self._ray.kill, self._actor)
            return
        try:
            await self._actor.kill.remote(grace_s)
        except self._ray.exceptions.RayError as exc:
            log.warning("task %s: kill through its actor failed: %s", self.task_id, exc)

    def detach(self) -> None:
        """Stop following (the gateway stops; the job runs on under its actor)."""
        self._poller.cancel()
        if self._starting is not None:
            self._starting.cancel()


class RayRunner:
    """Starts every job under a Ray actor; adopts the ones still running after a restart."""

    def __init__(
        self,
        *,
        ray: Any,
        workspace_of: Callable[[str], Path],
        logs_dir: Path,
        max_log_bytes: int,
        job_user: JobUser | None = None,
    ) -> None:
        self.ray = ray
        self.job_user = job_user  # jobs run as its per-task uids where their Ray worker is root
        self.max_log_bytes = max_log_bytes
        self.workspace_of = workspace_of
        self.logs_dir = logs_dir
        self._actor_class = ray.remote(JobActor)

    async def start(self, spec: JobSpec, on_output: OutputCallback) -> RayHandle:
        await asyncio.to_thread(self._kill_named, spec.task_id)  # a try that never started
        gpus = _gpu_count(spec)
        most = await asyncio.to_thread(self._most_gpus_on_a_node)
        if gpus > most:  # Ray would wait for such a node forever
            raise OSError(f"no Ray node has {gpus} GPUs (the most on one node: {most})")
        workspace = await asyncio.to_thread(lambda: self.ray.put(zip_dir(spec.cwd)))
        actor = self._actor_class.options(
            name=actor_name(spec.task_id),
            namespace=NAMESPACE,
            lifetime="detached",
            num_gpus=gpus,
            num_cpus=0 if gpus else 1,
            max_concurrency=4,  # poll and kill while close() may wait
            max_restarts=0,
        ).remote(spec.task_id)
        payload = {
            "argv": spec.argv,
            "env": spec.env,
            "user": self.job_user.for_task(spec.task_id).as_dict() if self.job_user else None,
            "max_log_bytes": self.max_log_bytes,
            "notice": truncation_notice(self.max_log_bytes),
        }
        starting = asyncio.ensure_future(self._start_job(spec, actor, payload, workspace, gpus))
        await asyncio.wait({starting}, timeout=START_WAIT_S)
        if starting.done():
            return self._handle(spec.task_id, actor, starting.result(), on_output)
        log.info("task %s: waiting for Ray to place its actor (%s GPU(s))", spec.task_id, gpus)
        return self._handle(spec.task_id, actor, None, on_output, starting=starting)

    async def _start_job(
        self, spec: JobSpec, actor: Any, payload: dict[str, Any], workspace: Any, gpus: int
    ) -> dict[str, Any]:
        """Start the job once Ray placed its actor; its info, or OSError."""
        try:
            info = await asyncio.wait_for(actor.start.remote(payload, workspace), PLACE_TIMEOUT_S)
        except TimeoutError as exc:
            self.ray.kill(actor)
            raise OSError(
                f"Ray placed no actor with {gpus} GPU(s) within {PLACE_TIMEOUT_S:g} s"
            ) from exc
        except self.ray.exceptions.RayError as exc:
            self.ray.kill(actor)
            raise OSError(f"the Ray actor failed: {str(exc).splitlines()[0]}") from exc
        if info.get("error"):
            await self._close(actor)
            raise OSError(info["error"])
        log.info(
            "task %s: Ray actor on node %s, pid %s, CUDA_VISIBLE_DEVICES=%r: %s",
            spec.task_id,
            info["node_id"][:12],
            info["pid"],
            info["cuda_visible_devices"],
            " ".join(spec.argv),
        )
        return dict(info)

    def _handle(
        self,
        task_id: str,
        actor: Any,
        info: dict[str, Any] | None,
        on_output: OutputCallback,
        starting: asyncio.Future[dict[str, Any]] | None = None,
    ) -> RayHandle:
        offsets = {s: logfiles.log_size(self.logs_dir, task_id, s) for s in STREAMS}
        return RayHandle(
            ray=self.ray,
            actor=actor,
            task_id=task_id,
            pid=int(info["pid"]) if info else 0,  # 0: known once the job started
            workspace=self.workspace_of(task_id),
            on_output=on_output,
            offsets=offsets,
            max_log_bytes=self.max_log_bytes,
            starting=starting,
        )

    def _most_gpus_on_a_node(self) -> int:
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        return max((int(n["Resources"].get("GPU", 0)) for n in nodes), default=0)

    def _actor(self, task_id: str) -> Any | None:
        try:
            return self.ray.get_actor(actor_name(task_id), namespace=NAMESPACE)
        except ValueError:
            return None

    def _kill_named(self, task_id: str) -> None:
        actor = self._actor(task_id)
        if actor is not None:
            self.ray.kill(actor)

    async def _close(self, actor: Any) -> None:
        with contextlib.suppress(Exception):
            await actor.close.remote()
        with contextlib.suppress(Exception):
            self.ray.kill(actor)

    async def _info(self, task_id: str) -> tuple[Any, dict[str, Any]] | None:
        actor = await asyncio.to_thread(self._actor, task_id)
        if actor is None:
            return None
        try:
            return actor, await asyncio.wait_for(actor.info.remote(), INFO_TIMEOUT_S)
        except TimeoutError:  # still waiting for its node: its job never started
            await asyncio.to_thread(self.ray.kill, actor)
            return None
        except self.ray.exceptions.RayError:
            return None

    async def was_started(self, task_id: str) -> bool:
        """Whether the job's actor still lives and started it (else it runs again)."""
        found = await self._info(task_id)
        if found is not None and not found[1]["started"]:
            await self._close(found[0])
        return found is not None and found[1]["started"]

    async def adopt(self, *, task_id: str, on_output: OutputCallback) -> RayHandle | JobExit:
        """Follow a job a previous gateway started, from the end of the gateway's logs."""
        found = await self._info(task_id)
        if found is None or not found[1]["started"]:
            return JobExit(None, FailureReason.LOST, "The job's Ray actor is gone")
        actor, info = found
        log.info("task %s: adopted its Ray actor (pid %s)", task_id, info["pid"])
        return self._handle(task_id, actor, info, on_output)

    def forget(self, task_id: str) -> None:
        """Nothing to remove on this side: the handle killed the actor at the job's end."""

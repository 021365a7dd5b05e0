"""Warm model workers: the runner of inference tasks and the pool that keeps models loaded.

An inference task takes no scheduler slot of its own; its worker does. The first request for
a model creates a worker, which asks for a GPU (or a CPU slot) through
``TaskManager.hold_slot`` and so waits in the one priority/FIFO queue with every task; the
worker process (``worker_main.py``) loads the model once and keeps the slot while it stays
warm. Later requests for that model (and the same placement) reuse it, one at a time, in
arrival order; the task is ``queued`` until the worker takes it.

Eviction: at most ``max_warm`` workers exist, and starting another first stops the least
recently used idle one. A worker idle for ``idle_timeout_s`` stops. An idle worker also
stops as soon as a queued task or worker waits for the kind of slot it holds: warm models
never make the queue wait. Deleting or archiving a model stops its workers first. A stopped
worker's slot goes back to the scheduler once its process has exited (GPU memory freed).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from vrungpu_gateway.engine import jobuser
from vrungpu_gateway.engine.environment import job_environment
from vrungpu_gateway.engine.events import Event, EventBus
from vrungpu_gateway.engine.jobuser import JobUser
from vrungpu_gateway.engine.layout import DataLayout
from vrungpu_gateway.engine.manager import TaskManager
from vrungpu_gateway.engine.repos import ModelStore
from vrungpu_gateway.engine.runner import JobExit, JobHandle, JobSpec, OutputCallback
from vrungpu_gateway.engine.scheduler import Assignment, Request
from vrungpu_gateway.engine.worker_process import (
    INPUT_FILE,
    RESULT_FILE,
    ModelProcess,
    SpawnWorker,
    WorkerGone,
    WorkerProcess,
    forward_output,
    read_result,
    say,
)
from vrungpu_gateway.protocol import TaskType
from vrungpu_gateway.records import ModelRecord, ModelStatus, TaskRecord, iso, utcnow

log = logging.getLogger(__name__)


class WorkerFailed(Exception):
    """A request could not be served; the message is the task's error line."""


class WorkerState(StrEnum):
    STARTING = "starting"  # waiting for room, a slot, or the model to load
    READY = "ready"
    STOPPING = "stopping"


@dataclass(frozen=True)
class Placement:
    """Where a request wants to run: a GPU (maybe exactly ``gpu_id``) or a CPU slot."""

    gpu: bool
    gpu_id: int | None = None
    gpus: int = 1

    def fits(self, gpu_ids: tuple[int, ...]) -> bool:
        """Would a slot holding ``gpu_ids`` serve this placement?"""
        if not self.gpu:
            return not gpu_ids
        return bool(gpu_ids) and (self.gpu_id is None or self.gpu_id in gpu_ids)


@dataclass(eq=False)
class Worker:
    worker_id: str
    model_id: str
    placement: Placement
    priority: int
    state: WorkerState = WorkerState.STARTING
    gpu_ids: tuple[int, ...] = ()
    process: ModelProcess | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # requests holding or waiting for the lock
    requests: int = 0
    handler: str | None = None
    load_ms: float | None = None
    started_at: datetime = field(default_factory=utcnow)
    last_used: float = field(default_factory=time.monotonic)
    last_used_at: datetime = field(default_factory=utcnow)
    slot: asyncio.Future[tuple[int, ...]] | None = None
    admitted: bool = False  # counted against max_warm (only those, so waiters never block)
    holds_slot: bool = False
    idle_timer: asyncio.TimerHandle | None = None
    stop_reason: str | None = None
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    owner: str | None = None  # the model's owner (a user's name), once the model is read

    @property
    def idle(self) -> bool:
        return self.state is WorkerState.READY and self.users == 0

    def serves(self, model_id: str, placement: Placement) -> bool:
        if self.model_id != model_id or self.state is WorkerState.STOPPING:
            return False
        if self.placement.gpu != placement.gpu or placement.gpu_id is None:
            return self.placement.gpu == placement.gpu
        if self.state is WorkerState.READY:
            return self.gpu_ids == (placement.gpu_id,)
        return self.placement.gpu_id == placement.gpu_id

    def as_dict(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "model_id": self.model_id,
            "owner": self.owner,
            "state": self.state.value,
            "pid": self.process.pid if self.process else None,
            "device": "gpu" if self.placement.gpu else "cpu",
            "gpu_ids": list(self.gpu_ids),
            "handler": self.handler,
            "load_ms": self.load_ms,
            "requests": self.requests,
            "busy": self.users > 0,
            "started_at": iso(self.started_at),
            "last_used_at": iso(self.last_used_at),
        }


class InferenceJob:
    """The ``JobHandle`` of one inference task: its request's life inside the pool."""

    pid = 0  # no process of its own; the worker's pid is in `GET /models/workers`
    log_offsets: dict[str, int] | None = None  # the supervisor writes the logs we hand it
    owns_deadline = False

    def __init__(self, work: Coroutine[Any, Any, int]) -> None:
        self._task = asyncio.ensure_future(work)

    async def wait(self) -> JobExit:
        await asyncio.wait({self._task})
        if self._task.cancelled():
            return JobExit(-signal.SIGTERM)
        if self._task.exception() is not None:
            log.error("inference request failed", exc_info=self._task.exception())
            return JobExit(1)
        return JobExit(self._task.result())

    async def kill(self, *, grace_s: float) -> None:
        self._task.cancel()
        await asyncio.wait({self._task})


class WorkerPool:
    """The runner of inference tasks (see the module docstring for the rules)."""

    def __init__(
        self,
        *,
        tasks: TaskManager,
        models: ModelStore,
        layout: DataLayout,
        bus: EventBus,
        max_warm: int,
        idle_timeout_s: float,
        grace_s: float,
        job_user: JobUser | None = None,
        spawn: SpawnWorker = WorkerProcess.spawn,
    ) -> None:
        if max_warm < 1:
            raise ValueError("max_warm must be at least 1")
        self.job_user = job_user  # workers run the model's code as its uids (None: ours)
        self.spawn = spawn  # a local process, or one under a Ray actor
        self.tasks = tasks
        self.models = models
        self.layout = layout
        self.max_warm = max_warm
        self.idle_timeout_s = idle_timeout_s
        self.grace_s = grace_s
        self.starts = 0  # worker processes started since the gateway started
        self._workers: list[Worker] = []
        self._retiring: set[Worker] = set()  # stopping: their slots come back once they exit
        self._gone: set[str] = set()  # deleted models: no new worker may load them
        self._changed = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        tasks.completion_hooks.append(self._attach_result)
        bus.subscribe(self._on_event)

    # -- the Runner protocol ------------------------------------------------------------------
    async def start(self, spec: JobSpec, on_output: OutputCallback) -> JobHandle:
        return InferenceJob(self._serve(spec, on_output))

    async def _serve(self, spec: JobSpec, out: OutputCallback) -> int:
        record = await self.tasks.get(spec.task_id)
        placement = Placement(gpu=record.device == "gpu", gpu_id=record.gpu_id)
        model_id = record.model_id or ""
        while True:
            if model_id in self._gone:
                say(out, "stderr", f"model {model_id} was deleted")
                return 1
            worker = self._find_or_add(model_id, placement, record.priority)
            worker.users += 1
            try:
                async with worker.lock:
                    if worker.state is WorkerState.STOPPING:
                        continue  # stopped while we waited: find or start another
                    if worker.state is WorkerState.STARTING:
                        await self._boot(worker, record, out)
                    else:
                        self.tasks.mark_running(task_id=record.task_id, gpu_ids=worker.gpu_ids)
                    return await self._predict(worker, spec, out)
            except WorkerFailed as exc:
                say(out, "stderr", str(exc))
                return 1
            finally:
                worker.users -= 1
                self._after_use(worker)

    def _find_or_add(self, model_id: str, placement: Placement, priority: int) -> Worker:
        for worker in self._workers:
            if worker.serves(model_id, placement):
                if worker.idle_timer is not None:
                    worker.idle_timer.cancel()
                    worker.idle_timer = None
                return worker
        worker = Worker(f"worker-{uuid.uuid4().hex[:12]}", model_id, placement, priority)
        self._workers.append(worker)
        return worker

    # -- starting a worker --------------------------------------------------------------------
    async def _boot(self, worker: Worker, record: TaskRecord, out: OutputCallback) -> None:
        """Room, slot, process, model: the cold path of the first request."""
        try:
            model = await self._servable(worker.model_id)
            worker.owner = model.owner
            await self._make_room(worker)
            worker.gpu_ids = await self._take_slot(worker, out)
            self._check_alive(worker)
            self.tasks.mark_running(task_id=record.task_id, gpu_ids=worker.gpu_ids)
            where = f"GPU {worker.gpu_ids[0]}" if worker.gpu_ids else "a CPU slot"
            say(out, "stdout", f"[vrungpu] starting a worker for {model.name} on {where}")
            await self._spawn(worker, model.file_name)
            await self._load(worker, out)
        except asyncio.CancelledError:
            await self._retire(worker, "the request was cancelled while the model loaded", True)
            raise
        except (WorkerFailed, WorkerGone, OSError) as exc:
            stopped = worker.stop_reason  # set when it was stopped from outside (unload)
            await self._retire(worker, f"start failed: {exc}", True)
            raise WorkerFailed(
                f"the model worker stopped: {stopped}" if stopped else str(exc)
            ) from None

    async def _servable(self, model_id: str) -> ModelRecord:
        model = await self.models.get_model(model_id)
        if model is None or model_id in self._gone:
            raise WorkerFailed(f"model {model_id} no longer exists")
        if model.status is not ModelStatus.READY:
            raise WorkerFailed(f"model {model_id} is {model.status.value}, not ready")
        return model

    async def _make_room(self, worker: Worker) -> None:
        """Wait until fewer than ``max_warm`` workers are admitted, stopping idle ones."""
        while True:
            self._check_alive(worker)
            others = [w for w in self._workers if w.admitted]
            if len(others) < self.max_warm:
                worker.admitted = True
                return
            idle = [w for w in others if w.idle]
            if idle:
                victim = min(idle, key=lambda w: w.last_used)
                await self._retire(victim, "evicted (least recently used) for another model")
                continue
            changed = self._changed
            await changed.wait()

    async def _take_slot(self, worker: Worker, out: OutputCallback) -> tuple[int, ...]:
        slot: asyncio.Future[tuple[int, ...]] = asyncio.get_running_loop().create_future()
        slot.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved either way
        worker.slot = slot

        def assigned(assignment: Assignment) -> None:
            if not slot.done():
                slot.set_result(assignment.gpu_ids)

        placement = worker.placement
        request = Request(
            worker.worker_id, worker.priority, 1 if placement.gpu else 0, placement.gpu_id
        )
        try:
            self.tasks.hold_slot(request=request, on_assigned=assigned)
        except Exception as exc:
            raise WorkerFailed(f"cannot place the model worker: {exc}") from None
        worker.holds_slot = True
        if not slot.done():
            kind = "GPU" if placement.gpu else "CPU slot"
            say(out, "stdout", f"[vrungpu] waiting for a free {kind} for the model worker")
            self._relieve()
        return await slot

    async def _spawn(self, worker: Worker, artifact: str) -> None:
        model_dir = self.layout.models / worker.model_id
        env = job_environment(
            task_id=worker.worker_id,
            workspace=str(model_dir),
            gpu_ids=worker.gpu_ids,
            user_env={"PYTHONDONTWRITEBYTECODE": "1"},  # keep the model folder as registered
        )
        user = self._user_of(worker)
        env = jobuser.environment(env, user, str(model_dir))
        await asyncio.to_thread(jobuser.share_read, model_dir, user)
        log_path = self.layout.logs / f"{worker.worker_id}.log"
        process = await self.spawn(
            python=self.tasks.python,
            model_dir=model_dir,
            artifact=artifact,
            env=env,
            log_path=log_path,
            user=user,
        )
        self.starts += 1
        if worker.state is WorkerState.STOPPING:  # stopped while it spawned: end it here
            await process.stop(grace_s=self.grace_s, kill=True)
            self._check_alive(worker)
        worker.process = process
        log.info("%s: pid %s, model %s", worker.worker_id, process.pid, worker.model_id)

    async def _load(self, worker: Worker, out: OutputCallback) -> None:
        assert worker.process is not None
        hello = await worker.process.handshake()
        self._check_alive(worker)
        forward_output(out, hello)
        if hello.get("type") != "ready":
            raise WorkerFailed(f"the model failed to load: {hello.get('error', 'unknown error')}")
        worker.state = WorkerState.READY
        worker.handler, worker.load_ms = hello.get("handler"), hello.get("load_ms")
        say(
            out,
            "stdout",
            f"[vrungpu] worker pid {worker.process.pid} loaded the model in "
            f"{worker.load_ms} ms ({worker.handler})",
        )

    def _user_of(self, worker: Worker) -> JobUser | None:
        """The uid the worker runs the model's code as: its own (None: the gateway's)."""
        return self.job_user.for_task(worker.worker_id) if self.job_user else None

    def _check_alive(self, worker: Worker) -> None:
        if worker.state is WorkerState.STOPPING:
            raise WorkerFailed(f"the model worker stopped: {worker.stop_reason}")

    # -- one request --------------------------------------------------------------------------
    async def _predict(self, worker: Worker, spec: JobSpec, out: OutputCallback) -> int:
        assert worker.process is not None
        worker.requests += 1
        message = {
            "id": spec.task_id,
            "input": str(spec.cwd / INPUT_FILE),
            "output": str(spec.cwd / RESULT_FILE),
        }
        user = self._user_of(worker)  # the worker writes the task's result file
        await asyncio.to_thread(jobuser.hand_over, str(spec.cwd), user)
        try:
            reply = await worker.process.request(message)
        except WorkerGone as exc:
            reason = worker.stop_reason or str(exc)
            await self._retire(worker, reason, True)
            raise WorkerFailed(f"{reason}; the next request starts a new worker") from None
        except asyncio.CancelledError:
            await self._retire(worker, "a request was cancelled or timed out mid-predict", True)
            raise
        finally:
            await asyncio.to_thread(jobuser.take_back, str(spec.cwd), user)
        worker.last_used, worker.last_used_at = time.monotonic(), utcnow()
        forward_output(out, reply)
        if reply.get("ok"):
            say(
                out,
                "stdout",
                f"[vrungpu] predicted in {reply.get('predict_ms')} ms by "
                f"worker pid {worker.process.pid}",
            )
            return 0
        say(out, "stderr", str(reply.get("error") or "predict() failed"))
        return 1

    async def _attach_result(self, record: TaskRecord) -> None:
        """Completion hook: the result file becomes the task's ``result``."""
        if record.task_type is TaskType.INFERENCE:
            workspace = self.layout.workspace(record.task_id)
            record.result = await asyncio.to_thread(read_result, workspace)

    # -- eviction -----------------------------------------------------------------------------
    def _after_use(self, worker: Worker) -> None:
        if not worker.idle:
            return
        loop = asyncio.get_running_loop()
        worker.idle_timer = loop.call_later(self.idle_timeout_s, self._expire, worker)
        self._notify()
        self._relieve()

    def _expire(self, worker: Worker) -> None:
        worker.idle_timer = None
        if worker.idle:
            self._retire_later(worker, f"idle for {self.idle_timeout_s:g} s")

    def _on_event(self, event: Event) -> None:
        task = event.get("task")
        if event.get("type") == "task_update" and task and task.get("status") == "queued":
            asyncio.get_running_loop().call_soon(self._relieve)

    def _relieve(self) -> None:
        """Stop idle workers whose slots a queued task or worker is waiting for."""
        queued = self.tasks.scheduler.queued_ids()
        idle = sorted((w for w in self._workers if w.idle), key=lambda w: w.last_used)
        if not queued or not idle:
            return
        live = {r.task_id: r for r in self.tasks.live_records()}
        workers = {w.worker_id: w.placement for w in self._workers}
        for holder in queued:
            want = workers.get(holder) or _placement_of(live.get(holder))
            if want is None:
                continue
            for victim in [w for w in idle if want.fits(w.gpu_ids)][: want.gpus]:
                idle.remove(victim)
                self._retire_later(victim, "evicted: a queued task needs its slot")
            if not idle:
                return

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- stopping workers ---------------------------------------------------------------------
    def _begin_retire(self, worker: Worker, reason: str) -> bool:
        """The synchronous half: from now on no request can pick this worker."""
        if worker.state is WorkerState.STOPPING:
            return False
        worker.state, worker.stop_reason = WorkerState.STOPPING, reason
        if worker in self._workers:
            self._workers.remove(worker)
        self._retiring.add(worker)
        if worker.idle_timer is not None:
            worker.idle_timer.cancel()
        if worker.slot is not None and not worker.slot.done():
            worker.slot.set_exception(WorkerFailed(f"the model worker stopped: {reason}"))
        log.info("%s: stopping (%s)", worker.worker_id, reason)
        return True

    async def _finish_retire(self, worker: Worker, kill: bool) -> None:
        try:
            if worker.process is not None:
                await worker.process.stop(grace_s=self.grace_s, kill=kill)
        finally:
            if worker.holds_slot:
                worker.holds_slot = False
                self.tasks.free_slot(holder_id=worker.worker_id)
            self._retiring.discard(worker)
            worker.stopped.set()
            self._notify()

    async def _retire(self, worker: Worker, reason: str, kill: bool = False) -> None:
        if self._begin_retire(worker, reason):
            await self._finish_retire(worker, kill)
        else:
            await worker.stopped.wait()

    def _retire_later(self, worker: Worker, reason: str) -> None:
        if self._begin_retire(worker, reason):
            job = asyncio.ensure_future(self._finish_retire(worker, False))
            self._background.add(job)
            job.add_done_callback(self._background.discard)

    async def unload(self, *, model_id: str, reason: str, forever: bool = False) -> int:
        """Stop every worker of a model (``forever``: it is being deleted); how many."""
        if forever:
            self._gone.add(model_id)
        victims = [w for w in self._workers if w.model_id == model_id]
        await asyncio.gather(*(self._retire(w, reason, True) for w in victims))
        return len(victims)

    async def close(self) -> None:
        """Stop every worker (the gateway is stopping)."""
        await asyncio.gather(*(self._retire(w, "the gateway is stopping") for w in self._workers))
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # -- queries ------------------------------------------------------------------------------
    def warm_models(self) -> set[str]:
        return {w.model_id for w in self._workers if w.state is WorkerState.READY}

    def describe(self) -> dict[str, Any]:
        return {
            "workers": [w.as_dict() for w in (*self._workers, *self._retiring)],
            "max_warm": self.max_warm,
            "idle_timeout_s": self.idle_timeout_s,
            "worker_starts": self.starts,
        }


def _placement_of(record: TaskRecord | None) -> Placement | None:
    if record is None:
        return None
    gpu = record.device == "gpu"
    return Placement(gpu=gpu, gpu_id=record.gpu_id, gpus=max(1, record.gpus) if gpu else 1)

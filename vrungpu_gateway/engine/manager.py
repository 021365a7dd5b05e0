"""The task manager: the one place that moves tasks through their lives.

It ties the store (rows), the scheduler (who runs where), the runner (processes, through a
``Supervisor`` per job), the log files and the event bus together. Every call is async and
keyword-only; blocking work (database, disk) runs off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from vrungpu_gateway import wire
from vrungpu_gateway.engine import logs as logfiles
from vrungpu_gateway.engine.environment import job_environment, validate_user_env
from vrungpu_gateway.engine.events import EventBus
from vrungpu_gateway.engine.layout import DataLayout
from vrungpu_gateway.engine.limits import RequestLimits
from vrungpu_gateway.engine.logs import Line
from vrungpu_gateway.engine.present import task_json
from vrungpu_gateway.engine.progress import Progress, clip_message
from vrungpu_gateway.engine.pyenvs import Env, EnvBuildError, EnvCache, read_requirements_file
from vrungpu_gateway.engine.repos import TaskStore
from vrungpu_gateway.engine.runner import (
    Backend,
    JobExit,
    JobHandle,
    JobSpec,
    OutputCallback,
    Runner,
)
from vrungpu_gateway.engine.scheduler import Assignment, Request, Scheduler
from vrungpu_gateway.engine.supervisor import Outcome, Supervisor
from vrungpu_gateway.engine.throttle import Throttle
from vrungpu_gateway.engine.users import User
from vrungpu_gateway.engine.workspace import remove_workspace
from vrungpu_gateway.errors import Conflict, InvalidRequest, NotFound
from vrungpu_gateway.protocol import Device, FailureReason, TaskStatus, TaskType
from vrungpu_gateway.records import TaskRecord, new_id, utcnow

log = logging.getLogger(__name__)

UPDATE_INTERVAL_S = 0.2  # task_update events per task: at most 5 a second
PERSIST_INTERVAL_S = 1.0  # progress rows written at most once a second per task

Prepare = Callable[[Path], str]  # fills a new workspace, returns the entry point
CompletionHook = Callable[[TaskRecord], Awaitable[None]]
SlotHolder = Callable[[Assignment], None]  # told when the scheduler hands it its slot


@dataclass(frozen=True)
class TaskSpec:
    """A validated run request."""

    name: str | None = None
    timeout_s: float = 3600.0
    gpu_id: int | None = None
    gpus: int = 1
    device: Device = Device.AUTO
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    priority: int = 0
    save_model: bool = False
    model_name: str | None = None
    task_type: TaskType = TaskType.TRAINING
    model_id: str | None = None
    requirements: list[str] | None = None  # None: a project's requirements.txt, if any


@dataclass
class LiveTask:
    record: TaskRecord
    done: asyncio.Event = field(default_factory=asyncio.Event)
    supervisor: Supervisor | None = None
    preparing: asyncio.Future[Env | None] | None = None  # its environment being built
    updates: Throttle | None = None
    persist: Throttle | None = None
    stop_requested: bool = False

    def stop(self) -> None:
        """End the task at whatever step it is: building its environment, between steps (the
        flag is read before the job starts), or running."""
        self.stop_requested = True
        if self.supervisor is not None:
            self.supervisor.cancel()
        elif self.preparing is not None:
            self.preparing.cancel()


class TaskManager:
    def __init__(
        self,
        *,
        repo: TaskStore,
        scheduler: Scheduler,
        runner: Backend,
        bus: EventBus,
        layout: DataLayout,
        python: str,
        kill_grace_s: float,
        envs: EnvCache | None = None,
        limits: RequestLimits | None = None,
    ) -> None:
        self.repo = repo
        self.limits = limits or RequestLimits()  # sizes of a request and of progress messages
        self.envs = envs  # per-job environments (requirements); None: every job on the base
        self.scheduler = scheduler
        self.runner = runner
        self.bus = bus
        self.layout = layout
        self.python = python
        self.kill_grace_s = kill_grace_s
        self.completion_hooks: list[CompletionHook] = []
        # Pooled runners, per task type (the warm model workers run inference): their tasks
        # take no slot of their own; the runner's workers hold slots through hold_slot().
        self.pooled_runners: dict[TaskType, Runner] = {}
        self._holders: dict[str, SlotHolder] = {}
        self._live: dict[str, LiveTask] = {}
        self._jobs: set[asyncio.Task[None]] = set()
        self._stopping = False

    # -- submission ------------------------------------------------------------------------
    def _request(self, task_id: str, spec: TaskSpec) -> tuple[Request, str]:
        has_gpus = bool(self.scheduler.gpu_indices)
        if spec.device is Device.GPU and not has_gpus:
            raise InvalidRequest('device "gpu" asked for, but this host has no GPUs', code="no_gpu")
        if spec.device is Device.CPU and spec.gpu_id is not None:
            raise InvalidRequest('gpu_id cannot be combined with device "cpu"')
        use_gpu = spec.device is Device.GPU or (spec.device is Device.AUTO and has_gpus)
        if spec.gpu_id is not None and not has_gpus:
            raise InvalidRequest(
                f"gpu_id {spec.gpu_id} does not exist: this host has no GPUs", code="no_gpu"
            )
        use_gpu = use_gpu or spec.gpu_id is not None
        request = Request(
            task_id, spec.priority, spec.gpus if use_gpu else 0, spec.gpu_id if use_gpu else None
        )
        problem = self.scheduler.validate(request)
        if problem:
            raise InvalidRequest(problem, code="unsatisfiable")
        return request, "gpu" if use_gpu else "cpu"

    async def submit(
        self, *, spec: TaskSpec, prepare: Prepare, user: User | None = None
    ) -> TaskRecord:
        """Validate, prepare the workspace, store the task (owned by ``user``) and queue it."""
        task_id = new_id()
        request, device = self._request(task_id, spec)
        self.limits.check_env(spec.env)
        self.limits.check_args(spec.args)
        user_env = validate_user_env(spec.env)
        workspace = self.layout.workspace(task_id)
        entry_point = await asyncio.to_thread(prepare, workspace)
        requirements = await self._requirements(spec, workspace, entry_point)
        record = TaskRecord(
            task_id=task_id,
            status=TaskStatus.PENDING,
            task_type=spec.task_type,
            device=device,
            timeout=spec.timeout_s,
            entry_point=entry_point,
            name=spec.name,
            gpus=request.gpus,
            gpu_id=request.gpu_id,
            priority=spec.priority,
            args=list(spec.args),
            env=user_env,
            save_model=spec.save_model,
            model_name=spec.model_name,
            model_id=spec.model_id,
            owner=user.name if user is not None else None,
        )
        try:
            if requirements and self.envs is not None:
                await asyncio.to_thread(
                    self.envs.remember, task_id=task_id, requirements=requirements
                )
            await self.repo.save_task(record)
        except Exception:
            await asyncio.to_thread(remove_workspace, workspace)
            raise
        log.info("task %s: submitted (%s, priority %s)", task_id, device, spec.priority)
        self._enqueue(record, request)
        return record

    async def _requirements(self, spec: TaskSpec, workspace: Path, entry_point: str) -> list[str]:
        """What the job's own environment holds: the request's list, else the project's file."""
        if self.envs is None or spec.task_type in self.pooled_runners:
            if spec.requirements:
                raise InvalidRequest("requirements are not supported for this kind of task")
            return []
        if spec.requirements is not None:
            return spec.requirements
        try:
            found = await asyncio.to_thread(read_requirements_file, workspace, entry_point)
        except Exception:
            await asyncio.to_thread(remove_workspace, workspace)
            raise
        return found or []

    def _enqueue(self, record: TaskRecord, request: Request) -> None:
        self._live[record.task_id] = LiveTask(record)
        if record.task_type in self.pooled_runners:  # queued until its worker takes it
            self._set_status(record, TaskStatus.QUEUED)
            self._start([Assignment(record.task_id, ())])
            return
        assignments = self.scheduler.submit(request)
        if record.status is TaskStatus.PENDING and self.scheduler.is_queued(record.task_id):
            self._set_status(record, TaskStatus.QUEUED)
        self._start(assignments)

    def _start(self, assignments: list[Assignment]) -> None:
        if self._stopping:  # what was handed a slot stays queued in the store for the next start
            return
        for assignment in assignments:
            holder = self._holders.get(assignment.task_id)
            if holder is not None:
                holder(assignment)
                continue
            job = asyncio.create_task(self._run(assignment))
            self._jobs.add(job)
            job.add_done_callback(self._jobs.discard)

    # -- one job -----------------------------------------------------------------------------
    async def _run(self, assignment: Assignment, *, adopted: bool = False) -> None:
        live = self._live[assignment.task_id]
        record = live.record
        if record.task_type not in self.pooled_runners and not adopted:
            self._mark_running(record, assignment.gpu_ids)
        live.updates = Throttle(UPDATE_INTERVAL_S, lambda: self._publish(record))
        live.persist = Throttle(PERSIST_INTERVAL_S, lambda: self._persist(record))
        prepared = await self._environment(live, adopted=adopted)
        if live.stop_requested and not adopted and not isinstance(prepared, Outcome):
            prepared = Outcome(None, FailureReason.CANCELLED, "Cancelled by request")
        if isinstance(prepared, Outcome):
            await self._complete(live, prepared)
            return
        supervisor = self._supervisor(live, assignment.gpu_ids, adopted=adopted, pyenv=prepared)
        live.supervisor = supervisor
        if live.stop_requested:  # an adopted job runs already: the supervisor ends it
            supervisor.cancel()
        try:
            outcome = await supervisor.run()
        except asyncio.CancelledError:  # the gateway stops and leaves the job running
            supervisor.detach()
            raise
        except Exception as exc:  # never leave a task running in the books
            log.exception("task %s: supervisor failed", record.task_id)
            outcome = Outcome(None, FailureReason.LOST, f"Gateway error: {exc}")
        try:
            await self._complete(live, outcome)
        except Exception:  # the store gave up after its retries; the slot is free again
            log.exception("task %s: could not record its end (%s)", record.task_id, outcome)

    async def _environment(self, live: LiveTask, *, adopted: bool) -> Env | Outcome | None:
        """The pre-run phase: the job's own environment, built (shown in its log and
        ``progress_message``) or taken from the cache; None: it runs on the base interpreter."""
        record = live.record
        if self.envs is None or record.task_type in self.pooled_runners:
            return None
        if adopted:
            await self.envs.pin(task_id=record.task_id)
            return None  # the job runs already; only its environment's use is recorded
        stderr = logfiles.OutputStream(
            logfiles.log_path(self.layout.logs, record.task_id, "stderr"),
            "stderr",
            lambda lines: self._output(record, lines),
            lambda _: None,
        )
        phase = lambda message: self._progress(live, Progress(record.progress, message))  # noqa: E731
        live.preparing = asyncio.ensure_future(
            self.envs.acquire(task_id=record.task_id, on_output=stderr.feed, on_phase=phase)
        )
        try:
            return await live.preparing
        except EnvBuildError as exc:
            return Outcome(None, FailureReason.SPAWN_ERROR, str(exc))
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the gateway stops: the task runs at its next start
            return Outcome(None, FailureReason.CANCELLED, "Cancelled by request")
        finally:
            live.preparing = None
            stderr.close()
            record.progress_message = None

    def _supervisor(
        self,
        live: LiveTask,
        gpu_ids: tuple[int, ...],
        *,
        adopted: bool = False,
        pyenv: Env | None = None,
    ) -> Supervisor:
        record = live.record
        workspace = self.layout.workspace(record.task_id)
        env = job_environment(
            task_id=record.task_id, workspace=str(workspace), gpu_ids=gpu_ids, user_env=record.env
        )
        if pyenv is not None:  # a cold start: the warm zygote runs the base interpreter only
            env = pyenv.job_env(env)
        spec = JobSpec(
            record.task_id,
            [pyenv.python if pyenv else self.python, "-u", record.entry_point, *record.args],
            workspace,
            env,
            timeout_s=record.timeout,
            grace_s=self.kill_grace_s,
        )

        def started(pid: int) -> None:
            if record.pid != pid:
                record.pid = pid
                self._persist(record)

        adopt = None
        if adopted:
            runner = self.runner

            def adopt(on_output: OutputCallback) -> Awaitable[JobHandle | JobExit]:
                return runner.adopt(task_id=record.task_id, on_output=on_output)

        return Supervisor(
            spec=spec,
            runner=self.pooled_runners.get(record.task_type, self.runner),
            logs_dir=self.layout.logs,
            timeout_s=record.timeout,
            grace_s=self.kill_grace_s,
            on_lines=lambda lines: self._output(record, lines),
            on_progress=lambda p: self._progress(live, p),
            on_started=started,
            adopt=adopt,
        )

    async def _complete(self, live: LiveTask, outcome: Outcome) -> None:
        record = live.record
        if self._stopping and outcome.failure_reason is FailureReason.CANCELLED:
            if record.status is TaskStatus.QUEUED:  # pooled, no worker took it: re-queued at start
                self._live.pop(record.task_id, None)
                live.done.set()
                return
            outcome = Outcome(
                outcome.return_code,
                FailureReason.LOST,
                "The gateway stopped (--on-stop kill) while the task was running",
                outcome.truncated,
            )
        record.return_code = outcome.return_code
        record.failure_reason = outcome.failure_reason.value if outcome.failure_reason else None
        record.error = outcome.error
        record.stdout_log_truncated = outcome.truncated.get("stdout", False)
        record.stderr_log_truncated = outcome.truncated.get("stderr", False)
        status = TaskStatus.COMPLETED if outcome.failure_reason is None else TaskStatus.FAILED
        if outcome.failure_reason is FailureReason.CANCELLED:
            status = TaskStatus.CANCELLED
        try:
            if status is TaskStatus.COMPLETED:
                status = await self._run_hooks(record)
            await self._finish(live, status)
        finally:  # whatever the store says, the slot is free again
            self._start(self.scheduler.release(record.task_id))
            self._forget_files(record.task_id)

    def _forget_files(self, task_id: str) -> None:
        asyncio.get_running_loop().run_in_executor(None, self.runner.forget, task_id)

    async def _run_hooks(self, record: TaskRecord) -> TaskStatus:
        for hook in self.completion_hooks:
            try:
                await hook(record)
            except Exception as exc:
                log.warning("task %s: completion step failed: %s", record.task_id, exc)
                record.failure_reason = FailureReason.EXIT_CODE.value
                record.error = f"Post-processing failed: {exc}"
                return TaskStatus.FAILED
        record.progress = 100.0
        return TaskStatus.COMPLETED

    async def _finish(self, live: LiveTask, status: TaskStatus) -> None:
        for throttle in (live.updates, live.persist):
            if throttle:
                throttle.cancel()
        record = live.record
        record.completed_at = utcnow()
        record.status = status
        try:
            await self.repo.save_task(record.copy())
        finally:
            self._live.pop(record.task_id, None)
            self._publish(record)
            live.done.set()
            if self.envs is not None:
                release = asyncio.create_task(self.envs.release(task_id=record.task_id))
                self._jobs.add(release)
                release.add_done_callback(self._jobs.discard)
        log.info("task %s: %s (%s)", record.task_id, status.value, record.error or "ok")

    # -- state changes and their echoes ---------------------------------------------------------
    def _set_status(self, record: TaskRecord, status: TaskStatus) -> None:
        record.status = status
        self._persist(record)
        self._publish(record)

    def _persist(self, record: TaskRecord) -> None:
        # Submitted now, so writes land in the order the states were reached.
        future = self.repo.save_task(record.copy())
        future.add_done_callback(_log_failure(record.task_id))

    def present(self, record: TaskRecord) -> wire.Task:
        """The task's JSON (without output), wherever it is sent."""
        return task_json(record, queue_position=self.scheduler.queue_position(record.task_id))

    def _publish(self, record: TaskRecord) -> None:
        self.bus.publish({"type": "task_update", "task": self.present(record)})

    def _output(self, record: TaskRecord, lines: list[Line]) -> None:
        """One event per chunk of output, whatever its number of lines."""
        self.bus.publish(
            {
                "type": "task_output",
                "task_id": record.task_id,
                "stream": lines[0].stream,
                "lines": lines,
            }
        )

    def _progress(self, live: LiveTask, progress: Progress) -> None:
        record = live.record
        record.progress = progress.percent
        if progress.message is not None:
            record.progress_message = clip_message(progress.message, self.limits.max_progress_chars)
        if live.updates and live.persist:
            live.updates.poke()
            live.persist.poke()

    # -- queries ------------------------------------------------------------------------------
    async def get(self, task_id: str, *, user: User | None = None) -> TaskRecord:
        """The task; NotFound when there is none, or ``user`` may not see it (the same
        answer: another user's ids are not disclosed)."""
        live = self._live.get(task_id)
        record = live.record if live is not None else None
        if record is None:
            record = await self.repo.get_task(task_id)
        if record is None or (user is not None and not user.owns(record.owner)):
            raise NotFound(f"task {task_id} not found", code="task_not_found")
        return record

    def owner_of(self, task_id: str) -> str | None:
        """The owner of a live task (None for none, or one from before users)."""
        live = self._live.get(task_id)
        return live.record.owner if live is not None else None

    async def describe(
        self, task_id: str, *, user: User | None = None, tail_bytes: int = logfiles.TAIL_BYTES
    ) -> wire.TaskDetail:
        """The task's JSON with the tails of both streams."""
        record = await self.get(task_id, user=user)
        return await asyncio.to_thread(self.with_tails, self.present(record), max_bytes=tail_bytes)

    def with_tails(self, task: wire.Task, *, max_bytes: int) -> wire.TaskDetail:
        """``task`` with the last ``max_bytes`` of each stream (blocking: reads the logs)."""
        detail = cast(wire.TaskDetail, dict(task))
        for stream in ("stdout", "stderr"):
            text, cut = logfiles.read_tail(
                self.layout.logs, task["task_id"], stream, max_bytes=max_bytes
            )
            detail[stream], detail[f"{stream}_truncated"] = text, cut  # type: ignore[literal-required]
        return detail

    async def list_tasks(
        self,
        *,
        status: str | None = None,
        task_type: str | None = None,
        device: str | None = None,
        limit: int = 50,
        offset: int = 0,
        user: User | None = None,
    ) -> tuple[list[wire.Task], int]:
        """Newest first; only ``user``'s own unless an admin (None: all)."""
        records, total = await self.repo.list_tasks(
            status=status,
            task_type=task_type,
            device=device,
            limit=limit,
            offset=offset,
            owner=user.scope if user is not None else None,
        )
        items = []
        for record in records:
            live = self._live.get(record.task_id)
            items.append(self.present(live.record if live else record))
        return items, total

    def _mark_running(self, record: TaskRecord, gpu_ids: tuple[int, ...]) -> None:
        record.gpu_ids = list(gpu_ids)
        record.gpu_id = gpu_ids[0] if gpu_ids else None
        record.started_at = utcnow()
        self._set_status(record, TaskStatus.RUNNING)

    # -- slots for pooled runners ---------------------------------------------------------------
    def mark_running(self, *, task_id: str, gpu_ids: tuple[int, ...]) -> None:
        """A pooled task reached its worker: it runs from now on, on ``gpu_ids``."""
        live = self._live.get(task_id)
        if live is not None and live.record.status is not TaskStatus.RUNNING:
            self._mark_running(live.record, gpu_ids)

    def hold_slot(self, *, request: Request, on_assigned: SlotHolder) -> None:
        """Queue a slot for something that is not a task (a warm model worker).

        It waits in the one queue, in the same priority/FIFO order as tasks; ``on_assigned``
        runs when the scheduler hands it out, maybe before this returns.
        """
        problem = self.scheduler.validate(request)
        if problem:
            raise InvalidRequest(problem, code="unsatisfiable")
        self._holders[request.task_id] = on_assigned
        self._start(self.scheduler.submit(request))

    def free_slot(self, *, holder_id: str) -> None:
        """Withdraw or give back a slot taken with hold_slot; queued work gets it at once."""
        self._holders.pop(holder_id, None)
        if not self.scheduler.cancel(holder_id):
            self._start(self.scheduler.release(holder_id))

    def live_records(self) -> list[TaskRecord]:
        return [live.record for live in self._live.values()]

    # -- control -----------------------------------------------------------------------------
    async def wait(self, *, task_id: str, timeout_s: float | None = None) -> TaskRecord:
        """Wait until the task is terminal (or ``timeout_s`` passes) and return it."""
        live = self._live.get(task_id)
        if live is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(live.done.wait()), timeout_s)
        return await self.get(task_id)

    async def cancel(self, *, task_id: str, user: User | None = None) -> TaskRecord:
        record = await self.get(task_id, user=user)
        live = self._live.get(task_id)
        if live is None:
            raise Conflict(f"task {task_id} is already {record.status.value}", code="task_not_live")
        if self.scheduler.cancel(task_id):
            record = live.record
            record.failure_reason = FailureReason.CANCELLED.value
            record.error = "Cancelled before it started"
            await self._finish(live, TaskStatus.CANCELLED)
            return record
        live.stop()
        await live.done.wait()
        return live.record

    async def delete(self, *, task_id: str, user: User | None = None) -> None:
        """Cancel the task if live, then remove its row, workspace and logs."""
        owner = (await self.get(task_id, user=user)).owner
        if task_id in self._live:
            await self.cancel(task_id=task_id)
        await self.repo.delete_task(task_id)
        await asyncio.to_thread(self._remove_files, task_id)
        self.bus.publish({"type": "task_deleted", "task_id": task_id, "owner": owner})

    def _remove_files(self, task_id: str) -> None:
        remove_workspace(self.layout.workspace(task_id))
        logfiles.remove_logs(self.layout.logs, task_id)

    async def set_progress(
        self, *, task_id: str, progress: float, message: str | None, user: User | None = None
    ) -> TaskRecord:
        record = await self.get(task_id, user=user)
        live = self._live.get(task_id)
        if live is None:
            raise Conflict(
                f"task {task_id} is {record.status.value}; progress is final", code="task_not_live"
            )
        self._progress(live, Progress(min(100.0, max(0.0, progress)), message))
        if live.persist is None:  # not running yet: write through
            self._persist(live.record)
            self._publish(live.record)
        return live.record

    # -- start and stop ----------------------------------------------------------------------
    async def recover(self) -> None:
        """Reconcile what a previous gateway left: adopt running jobs, re-queue waiting ones."""
        statuses = [TaskStatus.PENDING, TaskStatus.QUEUED, TaskStatus.RUNNING]
        records = await self.repo.tasks_with_status(statuses)
        waiting = []
        for record in records:  # running ones first: they hold their GPUs already
            if record.status is not TaskStatus.RUNNING:
                waiting.append(record)
            elif not await self._adopt(record):
                log.info("task %s: its job never started; queued again", record.task_id)
                record.status, record.started_at = TaskStatus.QUEUED, None
                record.gpu_id, record.gpu_ids = None, []
                waiting.append(record)
        for record in waiting:
            await self._requeue(record)

    async def _adopt(self, record: TaskRecord) -> bool:
        """Follow a job that was running; False when it never started."""
        gpu_ids = tuple(record.gpu_ids)
        if record.task_type in self.pooled_runners:
            await self._mark_lost(record)
            return True
        if not await self.runner.was_started(record.task_id):
            return False
        self.scheduler.restore(record.task_id, gpu_ids)
        self._live[record.task_id] = LiveTask(record)
        log.info("task %s: following it again after a restart", record.task_id)
        job = asyncio.create_task(self._run(Assignment(record.task_id, gpu_ids), adopted=True))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)
        return True

    async def _requeue(self, record: TaskRecord) -> None:
        request = Request(record.task_id, record.priority, record.gpus, record.gpu_id)
        problem = self.scheduler.validate(request)
        if problem:
            record.status, record.completed_at = TaskStatus.FAILED, utcnow()
            record.failure_reason = FailureReason.SPAWN_ERROR.value
            record.error = f"Cannot run after restart: {problem}"
            await self.repo.save_task(record)
            return
        log.info("task %s: re-queued after restart", record.task_id)
        self._enqueue(record, request)

    async def _mark_lost(self, record: TaskRecord) -> None:
        record.status, record.completed_at = TaskStatus.FAILED, utcnow()
        record.failure_reason = FailureReason.LOST.value
        record.error = "The gateway stopped while the task was running"
        await self.repo.save_task(record)
        log.warning("task %s: marked lost (was running when the gateway stopped)", record.task_id)

    def drain(self) -> None:
        """Start no more queued work (``--on-stop drain``): running jobs finish."""
        self._stopping = True

    async def shutdown(self, *, on_stop: str = "leave") -> None:
        """Stop the gateway's side of every job, as ``on_stop`` says.

        ``leave``: stop following; jobs run on and the next start adopts them. ``drain``:
        wait until running jobs end. ``kill``: end them (recorded as lost). Queued tasks stay
        queued for the next start in every case.
        """
        self._stopping = True
        if on_stop == "drain":
            live = [t.done.wait() for t in self._live.values() if t.supervisor is not None]
            await asyncio.gather(*live)
        elif on_stop == "kill":
            for live_task in self._live.values():
                live_task.stop()
        else:
            for job in self._jobs:
                job.cancel()
        if self._jobs:
            await asyncio.gather(*self._jobs, return_exceptions=True)


def _log_failure(task_id: str) -> Callable[[asyncio.Future[Any]], None]:
    def check(future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is not None:
            log.error("task %s: could not save: %s", task_id, future.exception())

    return check

"""The kernel manager: remote IPython kernels as holders of GPUs (or CPU slots).

A kernel asks the one scheduler for its slot exactly as a task does (``TaskManager.hold_slot``:
the same queue, priority 0, FIFO), holds it while alive and gives it back when it ends: shut
down, culled after ``idle_timeout_s`` without iopub activity (never while busy), or dead.
A start that gets no slot within ``queue_timeout_s`` fails with one line naming the holders.

Why not jupyter_client's ``AsyncKernelManager`` with a provisioner: it assumes that the
process it launched lives as long as the manager object in this process, builds the kernel's
environment from ``os.environ`` (the gateway's token with it), and has no way to be rebuilt
around a kernel that outlived a gateway restart. Our kernels are jobs of the runtime (shims:
detached, contained, warm-started, adopted after a restart; see ``process.py``), so the
process side is ours and jupyter_client does the protocol side: connection files and ports,
``Session`` signing, sockets and the client (``wire.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from vrungpu_gateway.engine.environment import validate_user_env
from vrungpu_gateway.engine.gpu_monitor import GpuHolders
from vrungpu_gateway.engine.kernels import specs as kernelspecs
from vrungpu_gateway.engine.kernels.kernel import ClientLink, Kernel, Phase
from vrungpu_gateway.engine.kernels.prespawn import SparePool
from vrungpu_gateway.engine.kernels.process import KernelLauncher
from vrungpu_gateway.engine.kernels.specs import Placement
from vrungpu_gateway.engine.kernels.wire import KernelGone, KernelWire, Send
from vrungpu_gateway.engine.manager import TaskManager
from vrungpu_gateway.engine.repos import KernelStore
from vrungpu_gateway.engine.runner import DetachedHandle, JobExit
from vrungpu_gateway.engine.scheduler import Assignment, Request, Scheduler
from vrungpu_gateway.engine.users import User
from vrungpu_gateway.errors import Conflict, EngineError, NotFound, Unavailable
from vrungpu_gateway.records import KernelRecord, KernelState, new_id, utcnow

log = logging.getLogger(__name__)

SHUTDOWN_WAIT_S = 3.0  # after a shutdown_request, before the process is ended by signal
CLAIM_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class KernelSettings:
    idle_timeout_s: float = 3600.0  # 0: never culled
    queue_timeout_s: float = 30.0
    max_kernels: int = 8
    prespawn: int = 0
    start_timeout_s: float = 120.0  # a cold start may import torch on a slow disk


class KernelManager:
    def __init__(
        self,
        *,
        tasks: TaskManager,
        scheduler: Scheduler,
        launcher: KernelLauncher,
        repo: KernelStore,
        holders: GpuHolders,
        settings: KernelSettings,
    ) -> None:
        self.tasks = tasks
        self.scheduler = scheduler
        self.launcher = launcher
        self.repo = repo
        self.holders = holders
        self.settings = settings
        self._kernels: dict[str, Kernel] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._culler: asyncio.Task[None] | None = None
        self.spares = SparePool(
            size=settings.prespawn, make=self._make_spare, discard=self._discard
        )

    # -- queries ---------------------------------------------------------------------------------
    @property
    def gpu_count(self) -> int:
        return len(self.scheduler.gpu_indices)

    def specs(self) -> dict[str, Any]:
        return kernelspecs.specs_model(gpu_count=self.gpu_count, argv=self.launcher.argv())

    def spec(self, name: str) -> dict[str, Any]:
        kernelspecs.placement_of(name, gpu_count=self.gpu_count)
        return kernelspecs.spec_model(name, argv=self.launcher.argv())

    def list(self, *, session: str | None = None, user: User | None = None) -> list[dict[str, Any]]:
        """The kernels (``user``'s own unless an admin; None: all), of ``session`` if given."""
        return [
            self._model(k)
            for k in self._kernels.values()
            if (session is None or k.record.session == session)
            and (user is None or user.owns(k.record.owner))
        ]

    def get(self, kernel_id: str, *, user: User | None = None) -> dict[str, Any]:
        return self._model(self._kernel(kernel_id, user=user))

    def describe_holder(self, holder_id: str) -> dict[str, Any] | None:
        kernel = self._kernels.get(holder_id)
        return kernel.holder() if kernel is not None else None

    def _model(self, kernel: Kernel) -> dict[str, Any]:
        return kernel.model(queue_position=self.scheduler.queue_position(kernel.id))

    def _kernel(self, kernel_id: str, *phases: Phase, user: User | None = None) -> Kernel:
        """The kernel; NotFound when there is none or ``user`` may not see it (one answer)."""
        kernel = self._kernels.get(kernel_id)
        if kernel is None or (user is not None and not user.owns(kernel.record.owner)):
            raise NotFound(f"kernel {kernel_id} not found", code="kernel_not_found")
        if phases and kernel.phase not in phases:
            raise Conflict(f"kernel {kernel_id} is {kernel.phase.value}", code="kernel_busy")
        return kernel

    # -- start -----------------------------------------------------------------------------------
    async def start(
        self,
        *,
        spec_name: str,
        session: str | None = None,
        gpu_id: int | None = None,
        env: dict[str, str] | None = None,
        user: User | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Start a kernel owned by ``user`` (or, for a ``session`` of that user that has one,
        return it): (model, created). Session names are per user."""
        placement = kernelspecs.placement_of(spec_name, gpu_count=self.gpu_count, gpu_id=gpu_id)
        user_env = validate_user_env(env or {})
        owner = user.name if user is not None else None
        found = self._by_session(session, owner)
        if found is not None:
            await asyncio.shield(found.ready)
            return self._model(found), False
        if len(self._kernels) >= self.settings.max_kernels:
            raise Conflict(
                f"this gateway runs at most {self.settings.max_kernels} kernels "
                "(--max-kernels); shut one down first",
                code="too_many_kernels",
            )
        spare = self.spares.take()
        kernel = spare or Kernel(self._new_record(new_id()))
        self._assign(kernel.record, spec_name, session, placement.device, user_env)
        kernel.record.owner = owner
        kernel.phase = Phase.STARTING
        self._kernels[kernel.id] = kernel
        reusable = spare is not None  # a spare goes back to the pool until its claim begins
        try:
            gpu_ids = await self._take_slot(kernel, placement)
            reusable = False
            await (self._claim(kernel, gpu_ids) if spare else self._launch(kernel, gpu_ids))
        except BaseException as exc:
            await self._abandon(kernel, exc, reusable=reusable)
            raise
        kernel.phase = Phase.ALIVE
        kernel.ready.set_result(None)
        log.info("kernel %s: started (%s, session %s, GPUs %s)", kernel.id, spec_name, session,
                 kernel.record.gpu_ids or "-")  # fmt: skip
        return self._model(kernel), True

    def _by_session(self, session: str | None, owner: str | None) -> Kernel | None:
        if not session:
            return None
        for kernel in self._kernels.values():
            record = kernel.record
            if (
                record.session == session
                and record.owner == owner
                and kernel.phase is not Phase.STOPPING
            ):
                return kernel
        return None

    def _new_record(self, kernel_id: str) -> KernelRecord:
        now = utcnow()
        return KernelRecord(
            kernel_id=kernel_id,
            spec_name="",
            connection_file=str(self.launcher.connection_file(kernel_id)),
            created_at=now,
            last_activity=now,
        )

    @staticmethod
    def _assign(
        record: KernelRecord,
        spec_name: str,
        session: str | None,
        device: str,
        env: dict[str, str],
    ) -> None:
        record.spec_name, record.session, record.device, record.env = (
            spec_name,
            session,
            device,
            env,
        )
        record.created_at = record.last_activity = utcnow()

    async def _take_slot(self, kernel: Kernel, placement: Placement) -> tuple[int, ...]:
        assigned: asyncio.Future[tuple[int, ...]] = asyncio.get_running_loop().create_future()

        def on_assigned(assignment: Assignment) -> None:
            if not assigned.done():
                assigned.set_result(assignment.gpu_ids)

        request = Request(kernel.id, 0, placement.gpus, placement.gpu_id)
        self.tasks.hold_slot(request=request, on_assigned=on_assigned)
        kernel.holds_slot = True
        try:
            return await asyncio.wait_for(asyncio.shield(assigned), self.settings.queue_timeout_s)
        except TimeoutError:
            code = "no_free_cpu" if placement.device == "cpu" else "no_free_gpu"
            raise Unavailable(self._no_slot_line(kernel, placement), code=code) from None

    def _no_slot_line(self, kernel: Kernel, placement: Placement) -> str:
        waited = f"within {self.settings.queue_timeout_s:g} s (--kernel-queue-timeout)"
        if placement.device == "cpu":
            cpu = ", ".join(self.holders.line(h) for h in self.scheduler.snapshot().cpu_busy)
            return f"no CPU slot came free {waited}: held by {cpu or 'nobody'}"
        indices = [placement.gpu_id] if placement.gpu_id is not None else self.scheduler.gpu_indices
        held = [
            f"GPU {i} held by {self.holders.line(owner)}"
            for i in indices
            if (owner := self.scheduler.gpu_owner(i))
        ]
        queued = self.scheduler.queue_position(kernel.id)
        where = f"; queue position {queued}" if queued else ""
        return f"no GPU came free {waited}: {', '.join(held) or 'GPUs taken meanwhile'}{where}"

    async def _launch(self, kernel: Kernel, gpu_ids: tuple[int, ...]) -> None:
        """Start a new kernel process on ``gpu_ids`` and wait until it answers."""
        record = kernel.record
        record.gpu_ids = list(gpu_ids)
        record.connection_file = await asyncio.to_thread(
            self.launcher.new_connection_file, kernel.id
        )
        await self.repo.save(record.copy())  # stored before the process: a crash leaves a trace
        kernel.handle = await self.launcher.start(
            kernel_id=kernel.id,
            connection_file=record.connection_file,
            gpu_ids=gpu_ids,
            user_env=record.env,
        )
        kernel.follower = asyncio.create_task(self._follow(kernel, kernel.handle))
        kernel.wire = KernelWire(kernel_id=kernel.id, connection_file=record.connection_file)
        kernel.wire.start()
        await self._wait_ready(kernel)
        kernel.wire.reset("idle")

    async def _wait_ready(self, kernel: Kernel) -> None:
        assert kernel.wire is not None and kernel.follower is not None
        follower = kernel.follower
        try:
            await kernel.wire.wait_ready(
                timeout_s=self.settings.start_timeout_s, alive=lambda: not follower.done()
            )
        except (KernelGone, TimeoutError) as exc:
            tail = self.launcher.stderr_tail(kernel.id)
            detail = f"{exc}{': ' + tail if tail else ''}"
            raise Unavailable(detail, code="kernel_start_failed") from None

    async def _claim(self, kernel: Kernel, gpu_ids: tuple[int, ...]) -> None:
        """Hand a spare its GPUs: the variables are set before anything can initialise CUDA
        (``os.environ`` assignment is ``putenv``; CUDA reads them at its lazy init)."""
        assert kernel.wire is not None
        record = kernel.record
        record.gpu_ids = list(gpu_ids)
        env = {"CUDA_VISIBLE_DEVICES": ",".join(map(str, gpu_ids)), **record.env}
        code = f"import os as _vrungpu_os\n_vrungpu_os.environ.update({env!r})\ndel _vrungpu_os\n"
        await kernel.wire.run_silently(code, timeout_s=CLAIM_TIMEOUT_S)
        record.state = KernelState.ALIVE
        kernel.wire.reset("idle")
        await self.repo.save(record.copy())

    async def _abandon(self, kernel: Kernel, exc: BaseException, *, reusable: bool) -> None:
        """Undo a start that failed: the slot, then the process (a spare goes back)."""
        self._kernels.pop(kernel.id, None)
        self._free_slot(kernel)
        if not kernel.ready.done():
            kernel.ready.set_exception(exc if isinstance(exc, Exception) else RuntimeError(exc))
            kernel.ready.exception()  # retrieved: waiters of the same session get it too
        if reusable and kernel.follower is not None and not kernel.follower.done():
            kernel.ready = asyncio.get_running_loop().create_future()
            kernel.phase = Phase.ALIVE
            self.spares.give_back(kernel)
            return
        await self._stop_and_end(kernel, reason=f"start failed: {exc}")

    async def _stop_and_end(self, kernel: Kernel, *, reason: str) -> None:
        kernel.phase = Phase.STOPPING
        with contextlib.suppress(Exception):
            await self._stop_process(kernel)
        with contextlib.suppress(Exception):
            await self._end(kernel, reason=reason)

    # -- spares ----------------------------------------------------------------------------------
    async def _make_spare(self) -> Kernel:
        kernel = Kernel(self._new_record(new_id()))
        kernel.record.state = KernelState.SPARE
        try:
            await self._launch(kernel, ())
        except BaseException:
            await self._stop_and_end(kernel, reason="prespawn failed")
            raise
        kernel.phase = Phase.ALIVE
        return kernel

    async def _discard(self, kernel: Kernel) -> None:
        await self._stop_and_end(kernel, reason="spare no longer needed")

    # -- control ---------------------------------------------------------------------------------
    async def interrupt(self, *, kernel_id: str, user: User | None = None) -> None:
        kernel = self._kernel(kernel_id, Phase.ALIVE, user=user)
        if not await asyncio.to_thread(self.launcher.interrupt, kernel_id=kernel.id):
            raise Conflict(f"kernel {kernel_id} has no process to interrupt", code="kernel_gone")
        log.info("kernel %s: interrupted", kernel_id)

    async def shutdown(
        self, *, kernel_id: str, reason: str = "shut down", user: User | None = None
    ) -> None:
        kernel = self._kernel(kernel_id, Phase.ALIVE, user=user)
        kernel.phase = Phase.STOPPING
        log.info("kernel %s (session %s): %s", kernel_id, kernel.record.session, reason)
        await self._stop_process(kernel)
        await self._end(kernel, reason=reason)

    async def restart(self, *, kernel_id: str, user: User | None = None) -> dict[str, Any]:
        """A new process behind the same id, channels, workspace and GPUs."""
        kernel = self._kernel(kernel_id, Phase.ALIVE, user=user)
        kernel.phase = Phase.RESTARTING
        try:
            await self._stop_process(kernel)
            assert kernel.wire is not None
            kernel.wire.reset("starting")
            kernel.handle = await self.launcher.start(
                kernel_id=kernel.id,
                connection_file=kernel.record.connection_file,
                gpu_ids=tuple(kernel.record.gpu_ids),
                user_env=kernel.record.env,
            )
            kernel.follower = asyncio.create_task(self._follow(kernel, kernel.handle))
            await self._wait_ready(kernel)
        except BaseException:
            await self._stop_and_end(kernel, reason="restart failed")
            raise
        kernel.wire.reset("idle")
        kernel.phase = Phase.ALIVE
        log.info("kernel %s: restarted", kernel_id)
        return self._model(kernel)

    def connect(
        self, *, kernel_id: str, send: Send, end: Any, user: User | None = None
    ) -> ClientLink:
        """A WebSocket client's link to the kernel's channels."""
        kernel = self._kernel(kernel_id, Phase.ALIVE, Phase.RESTARTING, user=user)
        assert kernel.wire is not None
        link = ClientLink(kernel_id=kernel.id, wire=kernel.wire, send=send, end=end)
        kernel.links.add(link)
        return link

    async def disconnect(self, link: ClientLink) -> None:
        kernel = self._kernels.get(link.kernel_id)
        if kernel is not None:
            kernel.links.discard(link)
        await link.close()

    def exists(self, kernel_id: str, *, user: User | None = None) -> bool:
        kernel = self._kernels.get(kernel_id)
        return kernel is not None and (user is None or user.owns(kernel.record.owner))

    # -- ends ------------------------------------------------------------------------------------
    async def _stop_process(self, kernel: Kernel) -> None:
        """Ask the kernel to exit; end it by signal when it does not in time."""
        follower, handle = kernel.follower, kernel.handle
        if follower is None or handle is None or follower.done():
            return
        if kernel.wire is not None:
            await kernel.wire.ask_shutdown(timeout_s=SHUTDOWN_WAIT_S / 2)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(follower), SHUTDOWN_WAIT_S)
            return
        await handle.kill(grace_s=self.launcher.grace_s)
        await asyncio.shield(follower)

    async def _follow(self, kernel: Kernel, handle: DetachedHandle) -> JobExit:
        """Wait for the process to end; an end nobody asked for is a dead kernel."""
        exit_ = await handle.wait()
        if kernel.handle is handle and kernel.phase is Phase.ALIVE:
            kernel.phase = Phase.STOPPING
            reason = (
                f"died (exit code {exit_.return_code}{', ' + exit_.error if exit_.error else ''})"
            )
            log.warning("kernel %s (session %s): %s", kernel.id, kernel.record.session, reason)
            if kernel.record.state is KernelState.SPARE:
                self.spares.lost(kernel)
            self._spawn(self._end(kernel, reason=reason))
        return exit_

    async def _end(self, kernel: Kernel, *, reason: str) -> None:
        """Forget an ended kernel: clients, channels, slot, files; the store says dead."""
        self._kernels.pop(kernel.id, None)
        for link in list(kernel.links):
            link.end()
            await link.close()
        kernel.links.clear()
        if kernel.wire is not None:
            await kernel.wire.close()
        self._free_slot(kernel)
        record = kernel.record
        record.state, record.ended_at, record.end_reason = KernelState.DEAD, utcnow(), reason
        record.last_activity = kernel.last_activity
        await self.repo.save(record.copy())
        await asyncio.to_thread(self.launcher.forget, kernel.id)

    def _free_slot(self, kernel: Kernel) -> None:
        if kernel.holds_slot:
            kernel.holds_slot = False
            self.tasks.free_slot(holder_id=kernel.id)

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Future[Any]) -> None:
        self._background.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        if isinstance(task.exception(), EngineError):  # e.g. culled while being deleted
            log.info("kernels: %s", task.exception())
        else:
            log.error("kernels: background step failed", exc_info=task.exception())

    # -- culling ---------------------------------------------------------------------------------
    async def _cull(self) -> None:
        timeout_s = self.settings.idle_timeout_s
        while True:
            await asyncio.sleep(max(0.5, min(timeout_s / 4, 60.0)))
            for kernel in list(self._kernels.values()):
                if (
                    kernel.phase is Phase.ALIVE
                    and kernel.execution_state != "busy"
                    and kernel.idle_s() >= timeout_s
                ):
                    reason = f"idle for {timeout_s:g} s (--kernel-idle-timeout): culled"
                    self._spawn(self.shutdown(kernel_id=kernel.id, reason=reason))

    # -- gateway start and stop ------------------------------------------------------------------
    async def recover(self) -> None:
        """Adopt the kernels a previous gateway left running, with their GPUs and sessions;
        record those that died meanwhile; end its spares."""
        for record in await self.repo.with_state(KernelState.SPARE, KernelState.ALIVE):
            outcome = await self.launcher.adopt(kernel_id=record.kernel_id)
            if isinstance(outcome, JobExit) or record.state is KernelState.SPARE:
                await self._bury(record, outcome)
                continue
            self.scheduler.restore(record.kernel_id, tuple(record.gpu_ids))
            kernel = Kernel(record, phase=Phase.ALIVE, handle=outcome, holds_slot=True)
            kernel.ready.set_result(None)
            kernel.follower = asyncio.create_task(self._follow(kernel, outcome))
            kernel.wire = KernelWire(kernel_id=kernel.id, connection_file=record.connection_file)
            kernel.wire.start()
            kernel.wire.reset("unknown")  # busy or not: its next status message tells
            self._kernels[kernel.id] = kernel
            log.info("kernel %s (session %s): adopted after a restart, GPUs %s",
                     kernel.id, record.session, record.gpu_ids or "-")  # fmt: skip

    async def _bury(self, record: KernelRecord, outcome: DetachedHandle | JobExit) -> None:
        if not isinstance(outcome, JobExit):  # a spare of the previous run
            await outcome.kill(grace_s=self.launcher.grace_s)
            await outcome.wait()
            reason = "spare of a previous gateway run: ended"
        else:
            reason = f"died while the gateway was down (exit code {outcome.return_code})"
            log.warning("kernel %s (session %s): %s", record.kernel_id, record.session, reason)
        record.state, record.ended_at, record.end_reason = KernelState.DEAD, utcnow(), reason
        await self.repo.save(record)
        await asyncio.to_thread(self.launcher.forget, record.kernel_id)

    def start_background(self) -> None:
        if self.settings.idle_timeout_s > 0:
            self._culler = asyncio.create_task(self._cull())
        self.spares.refill()

    async def close(self, *, on_stop: str) -> None:
        """``kill``: shut every kernel down. Otherwise leave them running for the next start
        (adopted then). Spares always end: they hold nothing of anyone's."""
        if self._culler is not None:
            self._culler.cancel()
        await self.spares.close()
        for kernel in list(self._kernels.values()):
            if on_stop == "kill" and kernel.phase is Phase.ALIVE:
                await self.shutdown(
                    kernel_id=kernel.id, reason="the gateway stopped (--on-stop kill)"
                )
            else:
                await self._leave(kernel)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def _leave(self, kernel: Kernel) -> None:
        if kernel.handle is not None:
            kernel.handle.detach()
        if kernel.follower is not None:
            kernel.follower.cancel()
            await asyncio.gather(kernel.follower, return_exceptions=True)
        for link in list(kernel.links):
            link.end()
            await link.close()
        if kernel.wire is not None:
            await kernel.wire.close()
        kernel.record.last_activity = kernel.last_activity
        await self.repo.save(kernel.record.copy())

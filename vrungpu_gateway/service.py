"""The composition root: builds the store, scheduler, runner, monitor, task manager,
warm model workers, remote kernels and model registry.

Nothing here knows HTTP; ``app.py`` hands this object to the handlers.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from vrungpu_gateway import __version__, logmask
from vrungpu_gateway.config import GatewayConfig, resolve_token
from vrungpu_gateway.engine import jobuser
from vrungpu_gateway.engine.archive import ZipLimits
from vrungpu_gateway.engine.events import EventBus
from vrungpu_gateway.engine.gpu_monitor import GpuHolders, GpuMonitor, HolderSource
from vrungpu_gateway.engine.kernels import KernelLauncher, KernelManager, KernelSettings
from vrungpu_gateway.engine.layout import DataLayout
from vrungpu_gateway.engine.limits import RequestLimits
from vrungpu_gateway.engine.manager import TaskManager
from vrungpu_gateway.engine.metrics import GatewayMetrics, GatewayParts
from vrungpu_gateway.engine.pyenvs import EnvCache, find_uv
from vrungpu_gateway.engine.ray_kernels import RayKernelLauncher
from vrungpu_gateway.engine.ray_runner import RayRunner, connect
from vrungpu_gateway.engine.ray_workers import RayWorkers
from vrungpu_gateway.engine.registry import ModelRegistry
from vrungpu_gateway.engine.runner import Backend, DetachedRunner, Runner, WarmSpawner
from vrungpu_gateway.engine.scheduler import Scheduler
from vrungpu_gateway.engine.stream_hub import StreamHub
from vrungpu_gateway.engine.users import UserBook, read_users_file
from vrungpu_gateway.engine.worker_process import WorkerProcess
from vrungpu_gateway.engine.workers import WorkerPool
from vrungpu_gateway.gpus import GpuBackend, RayGpus, parse_gpu_spec
from vrungpu_gateway.protocol import TaskType
from vrungpu_gateway.store.db import Database
from vrungpu_gateway.store.kernels import KernelRepo
from vrungpu_gateway.store.registry import ModelRepo
from vrungpu_gateway.store.tasks import TaskRepo

log = logging.getLogger(__name__)

PACE_TIMEOUT_S = 0.2  # the most a chunk of a job's output waits for a WebSocket reader


@dataclass
class Gateway:
    config: GatewayConfig
    layout: DataLayout
    db: Database
    task_repo: TaskRepo
    model_repo: ModelRepo
    bus: EventBus
    scheduler: Scheduler
    monitor: GpuMonitor
    tasks: TaskManager
    workers: WorkerPool
    models: ModelRegistry
    streams: StreamHub
    kernels: KernelManager
    token: str | None
    book: UserBook | None = None  # the users file's users; None: the main token's admin only
    warm: WarmSpawner | None = None
    data_lock: int | None = None  # held while this gateway owns the data dir
    version: str = __version__
    metrics: GatewayMetrics = field(init=False)
    users: UserBook = field(init=False)

    def __post_init__(self) -> None:
        self.users = self.book or UserBook(main_token=self.token, users_file=None)
        parts = GatewayParts(
            tasks=self.tasks,
            monitor=self.monitor,
            streams=self.streams,
            workers=self.workers,
            kernels=self.kernels,
            version=self.version,
            envs=self.tasks.envs,
        )
        self.metrics = GatewayMetrics(
            parts=parts,
            bus=self.bus,
            stored=self.task_repo.count_by_status,
        )

    @classmethod
    def create(
        cls,
        config: GatewayConfig,
        *,
        backend: GpuBackend | None = None,
        runner: Backend | None = None,
    ) -> Gateway:
        config.check()
        # a bad users file stops the start before anything is written
        user_entries = read_users_file(config.users_file) if config.users_file else None
        if user_entries is not None and config.no_auth:
            raise ValueError("--users-file needs tokens: with --no-auth everyone is the admin")
        layout = DataLayout(config.data_dir.resolve())
        layout.ensure()
        data_lock = layout.lock()  # one gateway per data dir (ValueError otherwise)
        isolation = jobuser.choose(config.job_user, python=config.python, reach=layout.root)
        layout.secure(passable=isolation.user is not None)
        ray = connect(config.ray_address) if config.backend == "ray" else None
        backend = backend or (RayGpus(ray) if ray else parse_gpu_spec(config.gpus))
        db = Database.open(
            config.db_url or Database.sqlite_url(layout.database), version=__version__
        )
        task_repo, model_repo = TaskRepo(db), ModelRepo(db)
        bus = EventBus()
        scheduler = Scheduler(gpu_indices=backend.indices(), cpu_slots=config.cpu_slots)
        holders = GpuHolders()
        monitor = GpuMonitor(backend=backend, scheduler=scheduler, bus=bus, holders=holders)
        warm = None
        if config.python == sys.executable:  # the zygote runs jobs with its own interpreter
            warm = WarmSpawner(
                python=config.python, preload=config.preload, log_path=layout.run / "zygote.log"
            )
        local = DetachedRunner(  # local jobs, and kernels whatever the backend
            run_dir=layout.run,
            logs_dir=layout.logs,
            max_log_bytes=int(config.max_log_mb * 2**20),
            zygote=warm,
            pace=lambda: bus.room(timeout_s=PACE_TIMEOUT_S),
            job_user=isolation.user,
        )
        if ray is not None:
            runner = runner or RayRunner(
                ray=ray,
                workspace_of=layout.workspace,
                logs_dir=layout.logs,
                max_log_bytes=int(config.max_log_mb * 2**20),
                job_user=isolation.user,
            )
        runner = runner or local
        envs = EnvCache(
            root=layout.root / "envs",
            python=config.python,
            uv=config.uv or find_uv(),
            max_bytes=int(config.env_cache_mb * 2**20),
            builder=isolation.user,
        )
        tasks = TaskManager(
            repo=task_repo,
            scheduler=scheduler,
            runner=runner,
            bus=bus,
            layout=layout,
            python=config.python,
            kill_grace_s=config.kill_grace_s,
            envs=envs,
            limits=RequestLimits.from_config(config),
        )
        workers = WorkerPool(
            tasks=tasks,
            models=model_repo,
            layout=layout,
            bus=bus,
            max_warm=config.max_warm_models,
            idle_timeout_s=config.worker_idle_timeout_s,
            grace_s=min(config.kill_grace_s, 5.0),
            job_user=isolation.user,
            spawn=RayWorkers(ray).spawn if ray else WorkerProcess.spawn,
        )
        tasks.pooled_runners[TaskType.INFERENCE] = workers
        kernels = cls._kernels(config, layout, db, tasks, local, holders, ray)
        holders.sources += [kernels.describe_holder, _worker_holder(workers), _task_holder(tasks)]
        models = ModelRegistry(
            repo=model_repo,
            layout=layout,
            tasks=tasks,
            pool=workers,
            bus=bus,
            zip_limits=ZipLimits.from_config(config),
        )
        token = resolve_token(config, layout.root)
        logmask.register_secret(token)
        users = UserBook(main_token=token, users_file=config.users_file, entries=user_entries)
        isolation.announce()  # once nothing can refuse the start any more
        streams = StreamHub(bus=bus, monitor=monitor, tasks=tasks)
        return cls(
            config,
            layout,
            db,
            task_repo,
            model_repo,
            bus,
            scheduler,
            monitor,
            tasks,
            workers,
            models,
            streams,
            kernels,
            token,
            users,
            warm,
            data_lock,
        )

    @staticmethod
    def _kernels(
        config: GatewayConfig,
        layout: DataLayout,
        db: Database,
        tasks: TaskManager,
        runner: Runner,
        holders: GpuHolders,
        ray: Any = None,
    ) -> KernelManager:
        if not isinstance(runner, DetachedRunner):
            raise ValueError("remote kernels run under the detached runner")
        # with Ray the scheduler's slots are the cluster's GPUs: kernels run under Ray actors
        launcher_class = (
            KernelLauncher if ray is None else functools.partial(RayKernelLauncher, ray=ray)
        )
        return KernelManager(
            tasks=tasks,
            scheduler=tasks.scheduler,
            launcher=launcher_class(
                runner=runner, layout=layout, python=config.python, grace_s=config.kill_grace_s
            ),
            repo=KernelRepo(db),
            holders=holders,
            settings=KernelSettings(
                idle_timeout_s=config.kernel_idle_timeout_s,
                queue_timeout_s=config.kernel_queue_timeout_s,
                max_kernels=config.max_kernels,
                prespawn=0 if ray is not None else config.prespawn_kernels,  # spares: local
            ),
        )

    async def start(self) -> None:
        if self.warm is not None:
            await self.warm.start()
        if self.tasks.envs is not None:
            await self.tasks.envs.start()
        await self.models.recover()
        await self.kernels.recover()  # before tasks: adopted kernels keep their GPUs
        await self.tasks.recover()
        self.kernels.start_background()
        self.monitor.start()

    async def stop(self) -> None:
        await self.monitor.stop()
        self.metrics.close()
        self.tasks.drain()  # slots that kernels free now must not start queued work
        await self.kernels.close(on_stop=self.config.on_stop)
        await self.tasks.shutdown(on_stop=self.config.on_stop)
        if self.tasks.envs is not None:  # builds still going: their tasks build at next start
            await self.tasks.envs.close()
        await self.workers.close()
        if self.warm is not None:
            await self.warm.close()
        self.db.close()
        if self.data_lock is not None:
            os.close(self.data_lock)

    async def overview(self) -> dict[str, object]:
        """The `GET /` body."""
        total_tasks = await self.task_repo.count_tasks()
        models = await self.model_repo.model_stats()
        pool = self.scheduler.snapshot()
        return {
            "service": "VrunGPU",
            "status": "running",
            "version": self.version,
            "gpu_count": pool.total_gpus,
            "available_gpus": len(pool.available_gpus),
            "gpu_kind": self.monitor.backend.kind,
            "cpu_slots": pool.cpu_slots,
            "queued_tasks": len(self.scheduler.queued_ids()),
            "total_tasks": total_tasks,
            "total_models": models["total"],
            "storage": {
                "workspaces": str(self.layout.workspaces),
                "models": str(self.layout.models),
                "database": self.db.where,
            },
        }

    async def stats(self) -> dict[str, object]:
        """The `GET /stats` body."""
        tasks = await self.task_repo.task_stats()
        models = await self.model_repo.model_stats()
        usage = tasks.pop("usage_count")
        return {
            "tasks": tasks,
            "models": models,
            "gpu": {"usage_count": usage, "current": self.scheduler.snapshot().as_dict()},
        }


def _task_holder(tasks: TaskManager) -> HolderSource:
    """A live task as the holder of its slot, with the user who owns it."""

    def describe(holder_id: str) -> dict[str, Any] | None:
        owner = tasks.owner_of(holder_id)
        return {"kind": "task", "id": holder_id, "owner": owner} if owner else None

    return describe


def _worker_holder(workers: WorkerPool) -> HolderSource:
    def describe(holder_id: str) -> dict[str, Any] | None:
        for worker in workers.describe()["workers"]:
            if worker["worker_id"] == holder_id:
                return {
                    "kind": "worker",
                    "id": holder_id,
                    "model_id": worker["model_id"],
                    "owner": worker["owner"],
                }
        return None

    return describe

"""The scheduler: a priority queue over a pool of GPUs and CPU slots. Pure logic, no I/O.

Order is priority (higher first), then arrival (FIFO). Each call that frees or adds work
returns the assignments it made, so the caller starts those jobs at once: no polling.
A queued task that does not fit yet (say it waits for GPU 1) does not block later tasks
that fit elsewhere.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Request:
    """What a task needs: ``gpus`` GPUs (any, or exactly ``gpu_id``), or one CPU slot."""

    task_id: str
    priority: int = 0
    gpus: int = 0
    gpu_id: int | None = None

    @property
    def wants_gpu(self) -> bool:
        return self.gpus > 0 or self.gpu_id is not None


@dataclass(frozen=True)
class Assignment:
    task_id: str
    gpu_ids: tuple[int, ...]  # empty for a CPU slot


@dataclass
class PoolSnapshot:
    total_gpus: int
    available_gpus: list[int]
    busy_gpus: dict[str, int]
    allocations: dict[str, list[int]]
    cpu_slots: int
    cpu_busy: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "total_gpus": self.total_gpus,
            "available_gpus": self.available_gpus,
            "busy_gpus": self.busy_gpus,
            "allocations": self.allocations,
            "cpu_slots": self.cpu_slots,
            "cpu_busy": self.cpu_busy,
        }


class Scheduler:
    def __init__(self, *, gpu_indices: list[int], cpu_slots: int) -> None:
        self.gpu_indices = sorted(gpu_indices)
        self.cpu_slots = cpu_slots
        self._queue: dict[str, tuple[int, int, Request]] = {}  # task_id -> sort key + request
        self._seq = itertools.count()
        self._gpu_owner: dict[int, str] = {}
        self._cpu_owner: set[str] = set()
        self._allocations: dict[str, tuple[int, ...]] = {}
        self.usage_count: dict[int, int] = {i: 0 for i in self.gpu_indices}

    # -- queries -------------------------------------------------------------------------
    def validate(self, request: Request) -> str | None:
        """Why ``request`` can never run on this pool, or None when it can."""
        if request.gpu_id is not None and request.gpu_id not in self.gpu_indices:
            have = ", ".join(map(str, self.gpu_indices)) or "none"
            return f"gpu_id {request.gpu_id} does not exist on this host (GPUs: {have})"
        if request.wants_gpu and request.gpus > len(self.gpu_indices):
            return f"asked for {request.gpus} GPUs but this host has {len(self.gpu_indices)}"
        if request.gpu_id is not None and request.gpus > 1:
            return "gpu_id selects one GPU; it cannot be combined with gpus > 1"
        if not request.wants_gpu and self.cpu_slots < 1:
            return "this gateway has no CPU slots (--cpu-slots 0)"
        return None

    def is_queued(self, task_id: str) -> bool:
        return task_id in self._queue

    def queue_position(self, task_id: str) -> int | None:
        """1-based place in the queue, or None when not queued."""
        if task_id not in self._queue:
            return None
        key = self._queue[task_id][:2]
        return 1 + sum(1 for other in self._queue.values() if other[:2] < key)

    def queued_ids(self) -> list[str]:
        return [item[2].task_id for item in sorted(self._queue.values(), key=lambda i: i[:2])]

    def allocation(self, task_id: str) -> tuple[int, ...] | None:
        return self._allocations.get(task_id)

    def snapshot(self) -> PoolSnapshot:
        free = [i for i in self.gpu_indices if i not in self._gpu_owner]
        busy: dict[str, int] = {}
        allocations: dict[str, list[int]] = {}
        for task_id, gpus in self._allocations.items():
            if gpus:
                busy[task_id] = gpus[0]
                allocations[task_id] = list(gpus)
        return PoolSnapshot(
            total_gpus=len(self.gpu_indices),
            available_gpus=free,
            busy_gpus=busy,
            allocations=allocations,
            cpu_slots=self.cpu_slots,
            cpu_busy=sorted(self._cpu_owner),
        )

    def gpu_owner(self, index: int) -> str | None:
        return self._gpu_owner.get(index)

    # -- changes -------------------------------------------------------------------------
    def submit(self, request: Request) -> list[Assignment]:
        """Queue ``request`` (validate it first) and hand out whatever now fits."""
        if request.task_id in self._queue or request.task_id in self._allocations:
            raise ValueError(f"task {request.task_id} is already scheduled")
        self._queue[request.task_id] = (-request.priority, next(self._seq), request)
        return self._dispatch()

    def restore(self, task_id: str, gpu_ids: tuple[int, ...]) -> None:
        """Record that ``task_id`` already holds ``gpu_ids`` (a CPU slot when empty): a job
        adopted at start-up. It is running, so it counts even beyond the pool's size."""
        self._allocations[task_id] = gpu_ids
        for index in gpu_ids:
            self._gpu_owner[index] = task_id
        if not gpu_ids:
            self._cpu_owner.add(task_id)

    def cancel(self, task_id: str) -> bool:
        """Take a task out of the queue; True when it was queued."""
        return self._queue.pop(task_id, None) is not None

    def release(self, task_id: str) -> list[Assignment]:
        """Free what ``task_id`` held and hand the freed slots to the next tasks."""
        gpus = self._allocations.pop(task_id, None)
        if gpus is None:
            return []
        for index in gpus:
            self._gpu_owner.pop(index, None)
        self._cpu_owner.discard(task_id)
        return self._dispatch()

    def _dispatch(self) -> list[Assignment]:
        made: list[Assignment] = []
        for _, _, request in sorted(self._queue.values(), key=lambda i: i[:2]):
            gpus = self._fit(request)
            if gpus is None:
                continue
            del self._queue[request.task_id]
            self._allocations[request.task_id] = gpus
            for index in gpus:
                self._gpu_owner[index] = request.task_id
                self.usage_count[index] = self.usage_count.get(index, 0) + 1
            if not gpus:
                self._cpu_owner.add(request.task_id)
            made.append(Assignment(request.task_id, gpus))
        return made

    def _fit(self, request: Request) -> tuple[int, ...] | None:
        if not request.wants_gpu:
            return () if len(self._cpu_owner) < self.cpu_slots else None
        free = [i for i in self.gpu_indices if i not in self._gpu_owner]
        if request.gpu_id is not None:
            return (request.gpu_id,) if request.gpu_id in free else None
        want = max(1, request.gpus)
        return tuple(free[:want]) if len(free) >= want else None

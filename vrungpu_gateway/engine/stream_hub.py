"""The gateway's one router from the event bus to its WebSocket clients.

It listens on the bus only while a client is connected (no client: no cost per output line),
keeps ``GpuMonitor.listeners`` equal to the number of clients (so the monitor's one timer
samples only while someone watches), and builds the ``init`` message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from vrungpu_gateway.engine.events import Event, EventBus
from vrungpu_gateway.engine.gpu_monitor import GpuMonitor
from vrungpu_gateway.engine.manager import TaskManager
from vrungpu_gateway.engine.streams import Client, ClientContext, Message, is_terminal
from vrungpu_gateway.engine.users import User

log = logging.getLogger(__name__)

INIT_TASKS = 20  # the newest tasks in `init` (live ones are always added)
INIT_TAIL_BYTES = 4 * 1024  # of each stream, per task in `init`
_NO_ROUTES: dict[str, tuple[Client, ...]] = {}  # never written to
# The owner of what an event is about, by event type; events not here go to every client.
# Deletions carry their owner on the bus for this routing only: clients get the seed shape.
_OWNER_OF: dict[str, Callable[[Event], str | None]] = {
    "task_update": lambda event: event["task"].get("owner"),
    "model_update": lambda event: event["model"].get("owner"),
    "task_deleted": lambda event: event.get("owner"),
    "model_deleted": lambda event: event.get("owner"),
}
_ROUTING_ONLY = {"task_deleted", "model_deleted"}


class StreamHub:
    def __init__(self, *, bus: EventBus, monitor: GpuMonitor, tasks: TaskManager) -> None:
        self.bus = bus
        self.monitor = monitor
        self.tasks = tasks
        self._clients: tuple[Client, ...] = ()
        # task_id -> stream -> the clients that want those lines now (rebuilt on any change)
        self._routes: dict[str, dict[str, tuple[Client, ...]]] = {}
        self._unsubscribe: Callable[[], None] | None = None
        self._context = ClientContext(
            logs_dir=tasks.layout.logs,
            describe=self.describe,
            is_running=self.is_running,
            changed=self._routes.clear,
        )
        bus.add_backlog(self._backlog)

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def connect(
        self, *, user: User | None = None, on_overrun: Callable[[], None] | None = None
    ) -> Client:
        """A new client that sees what ``user`` owns (None: everything)."""
        client = Client(self._context, on_overrun=on_overrun, user=user)
        if not self._clients:
            self._unsubscribe = self.bus.subscribe(self._route)
        self._clients += (client,)
        self._routes.clear()
        self.monitor.listeners += 1
        return client

    def disconnect(self, client: Client) -> None:
        """Forget ``client`` at once: its queue, replays and share of the GPU timer."""
        if client not in self._clients:
            return
        self._clients = tuple(c for c in self._clients if c is not client)
        self.monitor.listeners -= 1
        client.close()  # clears the routes
        if not self._clients and self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _backlog(self) -> list[asyncio.Event]:
        return [room for client in self._clients if (room := client.backlogged) is not None]

    def _route(self, event: Event) -> None:
        if event.get("type") == "task_output":  # the hot path: once per chunk of output
            clients = self._routes.get(event["task_id"], _NO_ROUTES).get(event["stream"])
            if clients is None:
                clients = self._route_for(event["task_id"], event["stream"])
            for client in clients:
                client.on_output(event)
            return
        self._broadcast(event)

    def _route_for(self, task_id: str, stream: str) -> tuple[Client, ...]:
        owner = self.tasks.owner_of(task_id)
        clients = tuple(c for c in self._clients if c.sees(owner) and c.wants(task_id, stream))
        self._routes.setdefault(task_id, {})[stream] = clients
        return clients

    def _broadcast(self, event: Event) -> None:
        kind = event.get("type")
        if kind == "task_update" and is_terminal(event["task"]):  # no more lines will come
            self._routes.pop(event["task"]["task_id"], None)
        owner_of = _OWNER_OF.get(kind or "")
        owner = owner_of(event) if owner_of is not None else None
        if kind in _ROUTING_ONLY:
            event = {k: v for k, v in event.items() if k != "owner"}
        for client in self._clients:
            if owner_of is not None and not client.sees(owner):
                continue
            if kind == "task_update":
                client.on_task_update(event)
            elif kind == "gpu_update":
                client.on_gpu_update(event)
            elif kind == "task_deleted":
                client.on_task_deleted(event)
            else:
                client.push_control(event)

    # -- what clients need from the gateway ---------------------------------------------------
    async def describe(self, task_id: str, user: User | None) -> Message:
        """A task's JSON as `task_update` carries it; raises NotFound (also when ``user``
        may not see it)."""
        return dict(self.tasks.present(await self.tasks.get(task_id, user=user)))

    def is_running(self, task_id: str) -> bool:
        return any(record.task_id == task_id for record in self.tasks.live_records())

    async def init_message(self, *, user: User | None = None) -> Message:
        """`init`: GPUs, pool, and the recent tasks (``user``'s) with the tails of their logs."""
        report = await self.monitor.report()
        items, _ = await self.tasks.list_tasks(limit=INIT_TASKS, user=user)
        listed = {item["task_id"] for item in items}
        items += [
            self.tasks.present(record)
            for record in self.tasks.live_records()
            if record.task_id not in listed and (user is None or user.owns(record.owner))
        ]
        tasks = await asyncio.to_thread(
            lambda: [self.tasks.with_tails(item, max_bytes=INIT_TAIL_BYTES) for item in items]
        )
        return {
            "type": "init",
            "gpus": report["devices"],
            "pool": self.monitor.pool(),
            "tasks": tasks,
        }

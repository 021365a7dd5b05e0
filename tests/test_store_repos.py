"""The repositories in process, on SQLite and on PostgreSQL: every field comes back as it was
stored, filters, order, counts and statistics agree, and a storage error is one line."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from vrungpu_gateway.errors import Unavailable
from vrungpu_gateway.protocol import TaskStatus, TaskType
from vrungpu_gateway.records import (
    ArtifactKind,
    KernelRecord,
    KernelState,
    ModelRecord,
    ModelStatus,
    TaskRecord,
)
from vrungpu_gateway.store.db import Database
from vrungpu_gateway.store.kernels import KernelRepo
from vrungpu_gateway.store.registry import ModelRepo
from vrungpu_gateway.store.tasks import TaskRepo

NOW = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        url = Database.sqlite_url(tmp_path / "vrungpu.db")
    else:
        url = request.getfixturevalue("postgres").new_database()
    database = Database.open(url, version="test")
    yield database
    database.close()


def task(n: int, **fields: object) -> TaskRecord:
    values: dict[str, object] = {
        "task_id": f"t{n}",
        "status": TaskStatus.COMPLETED,
        "task_type": TaskType.TRAINING,
        "device": "gpu",
        "timeout": 60.0,
        "entry_point": "main.py",
        "created_at": NOW + timedelta(seconds=n),
    }
    values.update(fields)
    return TaskRecord(**values)  # type: ignore[arg-type]


async def test_a_task_comes_back_field_for_field(db: Database) -> None:
    tasks = TaskRepo(db)
    record = task(
        1,
        name="ünïcode ✓",
        gpus=2,
        gpu_id=1,
        gpu_ids=[1, 3],
        priority=-5,
        args=["--lr", "0.1"],
        env={"KEY": "välue", "EMPTY": ""},
        started_at=NOW + timedelta(seconds=2),
        completed_at=NOW + timedelta(seconds=12, microseconds=5),
        return_code=0,
        progress=0.75,
        progress_message="epoch 3/4",
        result={"nested": {"list": [1, 2.5, None, True]}, "text": "x"},
        pid=12345,
        stdout_log_truncated=True,
        owner="alice",
    )
    await tasks.save_task(record)
    assert await tasks.get_task("t1") == record
    record.status, record.error, record.failure_reason = TaskStatus.FAILED, "boom", "exit_code"
    await tasks.save_task(record)  # the same id: an update
    assert await tasks.get_task("t1") == record
    assert await tasks.get_task("nope") is None


async def test_task_listing_filters_orders_pages_and_counts(db: Database) -> None:
    tasks = TaskRepo(db)
    for n, (status, device, owner) in enumerate(
        [("completed", "gpu", "a"), ("failed", "cpu", "a"), ("queued", "gpu", "b")]
        + [("completed", "cpu", None)]
    ):
        await tasks.save_task(task(n, status=TaskStatus(status), device=device, owner=owner))
    listed, total = await tasks.list_tasks()
    assert [r.task_id for r in listed] == ["t3", "t2", "t1", "t0"] and total == 4
    page, total = await tasks.list_tasks(limit=2, offset=1)
    assert [r.task_id for r in page] == ["t2", "t1"] and total == 4
    assert (await tasks.list_tasks(status="completed"))[1] == 2
    assert [r.task_id for r in (await tasks.list_tasks(device="cpu", owner="a"))[0]] == ["t1"]
    queued = await tasks.tasks_with_status([TaskStatus.QUEUED, TaskStatus.FAILED])
    assert [r.task_id for r in queued] == ["t1", "t2"]  # oldest first
    assert await tasks.count_tasks() == 4
    assert await tasks.count_by_status() == {"completed": 2, "failed": 1, "queued": 1}
    await tasks.delete_task("t0")
    assert await tasks.count_tasks() == 3


async def test_task_statistics(db: Database) -> None:
    tasks = TaskRepo(db)
    recent = datetime.now(UTC)
    for n, gpu_ids in enumerate([[0], [0, 1], []]):
        await tasks.save_task(
            task(
                n,
                created_at=recent - timedelta(days=2 * (n == 2)),
                started_at=recent,
                completed_at=recent + timedelta(seconds=2 * (n + 1)),
                gpu_ids=gpu_ids,
                task_type=TaskType.INFERENCE if n == 2 else TaskType.TRAINING,
            ),
        )
    stats = await tasks.task_stats()
    assert stats["by_status"] == {"completed": 3}
    assert stats["avg_duration"] == {"training": 3.0, "inference": 6.0}
    assert stats["last_24h"] == 2 and stats["usage_count"] == {"0": 2, "1": 1}


def model(name: str, **fields: object) -> ModelRecord:
    values: dict[str, object] = {
        "model_id": f"m-{name}-{len(fields)}",
        "name": name,
        "kind": ArtifactKind.FOLDER,
        "file_name": "model",
        "file_size": 2**40,  # BIGINT
        "sha256": "ab" * 32,
        "files": ["model/a.pt", "model/handler.py"],
        "handler": "handler.py",
        "created_at": NOW,
    }
    values.update(fields)
    return ModelRecord(**values)  # type: ignore[arg-type]


async def test_models_version_per_owner_and_name_and_update(db: Database) -> None:
    models = ModelRepo(db)
    first = await models.insert_model(model("digits", metrics={"acc": 0.97}, owner="alice"))
    later = NOW + timedelta(seconds=1)
    second = await models.insert_model(
        model("digits", created_at=later, model_id="m-2", owner="alice")
    )
    other = await models.insert_model(model("other", owner="alice"))
    bobs = await models.insert_model(model("digits", model_id="m-bob", owner="bob"))
    assert (first.version, second.version, other.version, bobs.version) == (1, 2, 1, 1)
    assert await models.get_model(first.model_id) == first
    listed, total = await models.list_models(name="digits", owner="alice")
    assert [m.version for m in listed] == [2, 1] and total == 2
    assert (await models.list_models(name="digits"))[1] == 3  # everyone's (the admin's listing)
    changed = await models.update_model(
        first.model_id, {"status": ModelStatus.ARCHIVED, "description": "old"}
    )
    assert changed is not None and changed.status is ModelStatus.ARCHIVED
    assert (await models.list_models(status="archived"))[0] == [changed]
    assert await models.update_model("nope", {"description": "x"}) is None
    assert await models.model_stats() == {"by_status": {"archived": 1, "ready": 3}, "total": 4}
    assert await models.delete_model(first.model_id) is True
    assert await models.delete_model(first.model_id) is False


async def test_kernels_are_kept_by_state(db: Database) -> None:
    repo = KernelRepo(db)
    alive = KernelRecord("k1", "vrungpu-1gpu", "/run/k1.json", NOW, NOW, "gpu", [0], "s1")
    spare = KernelRecord("k2", "vrungpu-cpu", "/run/k2.json", NOW + timedelta(seconds=1), NOW)
    spare.state, spare.env = KernelState.SPARE, {"A": "b"}
    for record in (alive, spare):
        await repo.save(record.copy())
    assert await repo.with_state(KernelState.ALIVE, KernelState.SPARE) == [alive, spare]
    alive.state, alive.ended_at, alive.end_reason = KernelState.DEAD, NOW, "idle"
    await repo.save(alive.copy())
    assert await repo.with_state(KernelState.DEAD) == [alive]
    assert await repo.get("k2") == spare and await repo.get("nope") is None


async def test_a_storage_error_is_one_line_without_the_statement(db: Database) -> None:
    with db.engine.begin() as conn:
        conn.execute(text("DROP TABLE tasks"))
    with pytest.raises(Unavailable) as caught:
        await TaskRepo(db).get_task("t1")
    assert caught.value.code == "storage_unavailable"
    detail = caught.value.detail
    assert "\n" not in detail and "SELECT" not in detail and "tasks" in detail, detail

"""The repositories in process, on SQLite and on PostgreSQL: every field comes back as it was
stored, filters, order, counts and statistics agree, and a storage error is one line."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from vrungpu_gateway.engine.errors import Unavailable
from vrungpu_gateway.engine.model_record import ArtifactKind, ModelRecord, ModelStatus
from vrungpu_gateway.engine.task import TaskRecord
from vrungpu_gateway.protocol import TaskStatus, TaskType
from vrungpu_gateway.store import registry as models
from vrungpu_gateway.store import tasks
from vrungpu_gateway.store.db import Database
from vrungpu_gateway.store.kernels import KernelRecord, KernelRepo, KernelState

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


def test_a_task_comes_back_field_for_field(db: Database) -> None:
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
    tasks.save_task(db, record)
    assert tasks.get_task(db, "t1") == record
    record.status, record.error, record.failure_reason = TaskStatus.FAILED, "boom", "exit_code"
    tasks.save_task(db, record)  # the same id: an update
    assert tasks.get_task(db, "t1") == record
    assert tasks.get_task(db, "nope") is None


def test_task_listing_filters_orders_pages_and_counts(db: Database) -> None:
    for n, (status, device, owner) in enumerate(
        [("completed", "gpu", "a"), ("failed", "cpu", "a"), ("queued", "gpu", "b")]
        + [("completed", "cpu", None)]
    ):
        tasks.save_task(db, task(n, status=TaskStatus(status), device=device, owner=owner))
    listed, total = tasks.list_tasks(db)
    assert [r.task_id for r in listed] == ["t3", "t2", "t1", "t0"] and total == 4
    page, total = tasks.list_tasks(db, limit=2, offset=1)
    assert [r.task_id for r in page] == ["t2", "t1"] and total == 4
    assert tasks.list_tasks(db, status="completed")[1] == 2
    assert [r.task_id for r in tasks.list_tasks(db, device="cpu", owner="a")[0]] == ["t1"]
    queued = tasks.tasks_with_status(db, [TaskStatus.QUEUED, TaskStatus.FAILED])
    assert [r.task_id for r in queued] == ["t1", "t2"]  # oldest first
    assert tasks.count_tasks(db) == 4
    assert tasks.count_by_status(db) == {"completed": 2, "failed": 1, "queued": 1}
    tasks.delete_task(db, "t0")
    assert tasks.count_tasks(db) == 3


def test_task_statistics(db: Database) -> None:
    recent = datetime.now(UTC)
    for n, gpu_ids in enumerate([[0], [0, 1], []]):
        tasks.save_task(
            db,
            task(
                n,
                created_at=recent - timedelta(days=2 * (n == 2)),
                started_at=recent,
                completed_at=recent + timedelta(seconds=2 * (n + 1)),
                gpu_ids=gpu_ids,
                task_type=TaskType.INFERENCE if n == 2 else TaskType.TRAINING,
            ),
        )
    stats = tasks.task_stats(db)
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


def test_models_version_per_owner_and_name_and_update(db: Database) -> None:
    first = models.insert_model(db, model("digits", metrics={"acc": 0.97}, owner="alice"))
    later = NOW + timedelta(seconds=1)
    second = models.insert_model(
        db, model("digits", created_at=later, model_id="m-2", owner="alice")
    )
    other = models.insert_model(db, model("other", owner="alice"))
    bobs = models.insert_model(db, model("digits", model_id="m-bob", owner="bob"))
    assert (first.version, second.version, other.version, bobs.version) == (1, 2, 1, 1)
    assert models.get_model(db, first.model_id) == first
    listed, total = models.list_models(db, name="digits", owner="alice")
    assert [m.version for m in listed] == [2, 1] and total == 2
    assert models.list_models(db, name="digits")[1] == 3  # everyone's (the admin's listing)
    changed = models.update_model(
        db, first.model_id, {"status": ModelStatus.ARCHIVED, "description": "old"}
    )
    assert changed is not None and changed.status is ModelStatus.ARCHIVED
    assert models.list_models(db, status="archived")[0] == [changed]
    assert models.update_model(db, "nope", {"description": "x"}) is None
    assert models.model_stats(db) == {"by_status": {"archived": 1, "ready": 3}, "total": 4}
    assert models.delete_model(db, first.model_id) is True
    assert models.delete_model(db, first.model_id) is False


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
        await db.run(tasks.get_task, db, "t1")
    assert caught.value.code == "storage_unavailable"
    detail = caught.value.detail
    assert "\n" not in detail and "SELECT" not in detail and "tasks" in detail, detail

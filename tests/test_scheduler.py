"""The scheduler alone: pure logic, no processes."""

from __future__ import annotations

from vrungpu_gateway.engine.scheduler import Assignment, Request, Scheduler


def make(gpus: int = 2, cpu: int = 1) -> Scheduler:
    return Scheduler(gpu_indices=list(range(gpus)), cpu_slots=cpu)


def test_fifo_on_free_gpus_then_queue() -> None:
    s = make()
    assert s.submit(Request("a", gpus=1)) == [Assignment("a", (0,))]
    assert s.submit(Request("b", gpus=1)) == [Assignment("b", (1,))]
    assert s.submit(Request("c", gpus=1)) == []
    assert s.queue_position("c") == 1
    assert s.release("a") == [Assignment("c", (0,))]
    assert s.queue_position("c") is None


def test_priority_before_fifo() -> None:
    s = make(gpus=1)
    s.submit(Request("run", gpus=1))
    s.submit(Request("low", gpus=1, priority=0))
    s.submit(Request("high", gpus=1, priority=5))
    s.submit(Request("low2", gpus=1, priority=0))
    assert s.queued_ids() == ["high", "low", "low2"]
    assert [s.queue_position(t) for t in ("high", "low", "low2")] == [1, 2, 3]
    assert s.release("run") == [Assignment("high", (0,))]


def test_explicit_gpu_waits_for_that_gpu_without_blocking_others() -> None:
    s = make()
    s.submit(Request("on1", gpu_id=1))
    assert s.submit(Request("wants1", gpu_id=1)) == []
    assert s.submit(Request("any", gpus=1)) == [Assignment("any", (0,))]
    assert s.release("any") == []
    assert s.release("on1") == [Assignment("wants1", (1,))]


def test_multi_gpu_job_takes_n_gpus() -> None:
    s = make(gpus=4)
    assert s.submit(Request("one", gpus=1)) == [Assignment("one", (0,))]
    assert s.submit(Request("three", gpus=3)) == [Assignment("three", (1, 2, 3))]
    pool = s.snapshot()
    assert pool.available_gpus == []
    assert pool.allocations == {"one": [0], "three": [1, 2, 3]}
    assert pool.busy_gpus == {"one": 0, "three": 1}


def test_cpu_slots_are_separate_from_gpus() -> None:
    s = make(gpus=1, cpu=2)
    assert s.submit(Request("c1")) == [Assignment("c1", ())]
    assert s.submit(Request("c2")) == [Assignment("c2", ())]
    assert s.submit(Request("c3")) == []
    assert s.submit(Request("g", gpus=1)) == [Assignment("g", (0,))]
    assert s.snapshot().cpu_busy == ["c1", "c2"]
    assert s.release("c1") == [Assignment("c3", ())]


def test_cancel_removes_from_queue_only() -> None:
    s = make(gpus=1)
    s.submit(Request("a", gpus=1))
    s.submit(Request("b", gpus=1))
    assert s.cancel("b") is True
    assert s.cancel("a") is False  # running: the caller kills it, then releases
    assert s.release("a") == []


def test_validate_reports_impossible_requests() -> None:
    s = make(gpus=2, cpu=0)
    assert "gpu_id 7" in (s.validate(Request("x", gpu_id=7)) or "")
    assert "3 GPUs" in (s.validate(Request("x", gpus=3)) or "")
    assert "CPU slots" in (s.validate(Request("x")) or "")
    assert s.validate(Request("x", gpus=2)) is None


def test_usage_count_counts_assignments() -> None:
    s = make()
    for name in ("a", "b"):
        s.submit(Request(name, gpu_id=1))
        s.release(name)
    assert s.usage_count == {0: 0, 1: 2}

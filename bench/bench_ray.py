"""The Ray backend's overhead: submit -> running and submit -> done of a trivial job, on the local
backend and on ``--backend ray`` (a local Ray head with two declared GPUs), in the same run.

"Running" is when the job's first output line is in its log (the job really runs: on Ray, its
actor was placed, the workspace unpacked on the node and the process started), not the
``running`` status the scheduler sets when it hands out the slot. "Done" is a terminal status.
Each job asks for one GPU, so on Ray it gets a fresh actor every time. Nearly all of Ray's
extra time is that actor's worker process starting (Python and ``import ray``: ~3 s on a loaded
2-core machine; ~0.1 s while Ray still has prestarted idle workers); the gateway's own part
(zip, ``ray.put``, unpack on the node, spawn) is ~20 ms for a small workspace.

Run: ``.venv/bin/python bench/bench_ray.py [--runs 10]`` (needs the ray package and command).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support import Api, GatewayProcess, wait_for  # noqa: E402
from tests.test_ray import RAY_ENV, ray_cluster  # noqa: E402

JOB = "print('hello', flush=True)\n"
TERMINAL = ("completed", "failed", "cancelled")


def one_job(api: Api) -> tuple[float, float]:
    """Seconds from submit to the first output line, and to a terminal status."""
    start = time.perf_counter()
    task_id = api.submit(JOB)
    logs = f"/task/{task_id}/logs"
    out = {"stream": "stdout"}
    wait_for(lambda: api.get(logs, params=out).json()["lines"], 120, 0.01, what="first output")
    running = time.perf_counter() - start
    status = wait_for(lambda: (s := api.task(task_id)["status"]) in TERMINAL and s, 120, 0.01)
    done = time.perf_counter() - start
    assert status == "completed", status
    return running, done


def measure(gw: GatewayProcess, runs: int) -> tuple[list[float], list[float]]:
    one_job(gw.api)  # warms the gateway's own paths (and Ray's worker pool)
    results = [one_job(gw.api) for _ in range(runs)]
    return [r for r, _ in results], [d for _, d in results]


def row(name: str, ray: list[float], local: list[float]) -> None:
    ours, base = statistics.median(ray), statistics.median(local)
    print(f"{name:<28}{ours:>10.3f}{base:>10.3f}{ours / base:>8.1f}  s (p50 of {len(ray)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vrungpu-bench-") as tmp:
        local = GatewayProcess(Path(tmp) / "local").start()
        try:
            local_running, local_done = measure(local, args.runs)
        finally:
            local.stop()
        with ray_cluster() as address:
            extra = ["--backend", "ray", "--ray-address", address]
            ray = GatewayProcess(Path(tmp) / "ray", extra=extra, env=RAY_ENV).start()
            try:
                ray_running, ray_done = measure(ray, args.runs)
            finally:
                ray.stop()
    print(f"{'trivial job, 1 GPU':<28}{'ray':>10}{'local':>10}{'ratio':>8}")
    row("submit -> running", ray_running, local_running)
    row("submit -> done", ray_done, local_done)


if __name__ == "__main__":
    main()

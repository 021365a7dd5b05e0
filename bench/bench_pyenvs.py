"""Per-job environments: a job's first run with new ``requirements`` (the venv is built), the
same requirements again (cached), and a plain job with none, each submit -> done through
``POST /run/sync`` on one gateway.

Offline and reproducible: the requirement is a small wheel this script writes into a temporary
folder that uv reads (``UV_OFFLINE=1``, ``UV_FIND_LINKS``, a uv cache of its own); every
"first build" round uses new requirements (another version of that wheel), so each one builds.
The job imports the package and prints one line.

Run: ``.venv/bin/python bench/bench_pyenvs.py [--runs 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support import Api, GatewayProcess  # noqa: E402
from tests.test_pyenvs import PKG, USES_PKG, write_wheel  # noqa: E402


def timed(api: Api, requirements: list[str] | None) -> tuple[float, dict[str, Any]]:
    body: dict[str, Any] = {"code": USES_PKG if requirements else "print('value', 0)\n"}
    if requirements:
        body["requirements"] = requirements
    start = time.perf_counter()
    res = api.post("/run/sync", json=body, timeout=600)
    elapsed = time.perf_counter() - start
    task = res.json()
    assert task.get("status") == "completed", task
    return elapsed, task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vrungpu-bench-") as tmp:
        wheels = Path(tmp) / "wheels"
        wheels.mkdir()
        for i in range(args.runs):
            write_wheel(wheels, PKG, f"1.{i}", f"VALUE = {i}\n")
        env = {
            "UV_OFFLINE": "1",
            "UV_FIND_LINKS": str(wheels),
            "UV_CACHE_DIR": str(Path(tmp) / "uv-cache"),
            "UV_NO_CONFIG": "1",
        }
        gw = GatewayProcess(Path(tmp) / "data", gpus="none", env=env).start()
        try:
            rows = measure(gw.api, args.runs)
        finally:
            gw.stop()
    print(f"{'submit -> done, /run/sync':<40}{'p50 s':>8}{'min s':>8}{'max s':>8}  runs")
    for name, values in rows:
        print(
            f"{name:<40}{statistics.median(values):>8.3f}{min(values):>8.3f}"
            f"{max(values):>8.3f}  {len(values)}"
        )


def measure(api: Api, runs: int) -> list[tuple[str, list[float]]]:
    timed(api, None)  # the first job warms the gateway's own paths
    plain, first, cached = [], [], []
    for i in range(runs):
        plain.append(timed(api, None)[0])
        requirements = [f"{PKG}==1.{i}"]
        seconds, task = timed(api, requirements)
        assert "building environment" in task["stderr"], task["stderr"]
        first.append(seconds)
        seconds, task = timed(api, requirements)
        assert "cached environment" in task["stderr"], task["stderr"]
        cached.append(seconds)
    return [
        ("plain job (no requirements)", plain),
        ("requirements, first run (venv built)", first),
        ("same requirements again (cached)", cached),
    ]


if __name__ == "__main__":
    main()

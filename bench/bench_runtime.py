"""The job runtime: what a job costs through the gateway beside a cold ``python -u`` doing the same.

Issue 9's figures, each beside its baseline measured in the same run, with the ratio and goal:

- a trivial ``POST /run/sync`` round trip (code ``print(1)``), p50 over ``--runs``, against a
  cold ``python -u`` running the same code from a file with stdout to a file (goal <= 0.5x); on
  a gateway whose zygote preloads nothing (what warm start alone gives), on one with
  ``--preload torch`` and on one forced to start jobs cold (``--python`` naming the same
  interpreter by another path, so the zygote is not used);
- a job that imports torch, submit -> done (``/run/sync``) with ``--preload torch``, against a
  cold ``python -u`` running the same script (goal <= 0.1x); skipped with a note when torch is
  not importable (``.venv/bin/pip install torch==2.13.0`` installs the CPU build);
- a job printing 200,000 lines, submit -> done, against a cold ``python -u`` writing the same
  lines to a file (goal <= 1.3x).

The ``job s`` column is the task's own ``duration`` (started -> completed, as the gateway
records it): the rest of a round trip is queueing, spawning and bookkeeping.

Run: ``.venv/bin/python bench/bench_runtime.py [--runs 30] [--heavy-runs 5] [--lines 200000]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support import GatewayProcess  # noqa: E402

TRIVIAL = "print(1)\n"
TORCH = "import torch\nprint(torch.__version__)\n"
LINES = "for i in range({n}):\n    print(i)\n"


@dataclass
class Row:
    name: str
    ours: list[float]
    base: list[float]
    goal: float | None
    job: list[float]

    def print(self) -> None:
        ours, base = statistics.median(self.ours), statistics.median(self.base)
        ratio = ours / base
        job = f"{statistics.median(self.job):.3f}" if self.job else "-"
        goal = f"<= {self.goal:g}x" if self.goal is not None else "-"
        met = "-" if self.goal is None else "yes" if ratio <= self.goal else "NO"
        print(f"{self.name:<46}{ours:>9.3f}{job:>8}{base:>9.3f}{ratio:>8.2f}{goal:>10}{met:>6}")


def cold_runs(code: str, runs: int, tmp: Path) -> list[float]:
    """Wall times of ``python -u script.py > file`` (a fresh interpreter each time)."""
    script, out = tmp / "cold_job.py", tmp / "cold_job.out"
    script.write_text(code)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    took = []
    for _ in range(runs):
        with open(out, "wb") as fh:
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-u", str(script)], stdout=fh, env=env, cwd=tmp, check=True
            )
            took.append(time.perf_counter() - start)
    return took


def sync_runs(gw: GatewayProcess, code: str, runs: int) -> tuple[list[float], list[float], str]:
    """Round trips of ``POST /run/sync``, the tasks' own durations, and the last task's id."""
    api = gw.api
    took: list[float] = []
    jobs: list[float] = []
    for _ in range(runs):
        start = time.perf_counter()
        res = api.post("/run/sync", json={"code": code, "timeout": 600}, timeout=600)
        took.append(time.perf_counter() - start)
        task = res.json()
        if res.status_code != 200 or task.get("status") != "completed":
            raise SystemExit(f"job did not complete: {res.status_code} {res.text[:500]}")
        jobs.append(float(task["duration"]))
    return took, jobs, task["task_id"]


def check_lines(gw: GatewayProcess, task_id: str, n: int) -> None:
    """A lines job's log holds every line once (the bench measures a correct run)."""
    size = (gw.data_dir / "logs" / f"{task_id}.stdout.log").stat().st_size
    if size != sum(len(f"{i}\n") for i in range(n)):
        raise SystemExit(f"the 200k-line job's log is {size} bytes: lines missing or doubled")


def on_gateway(tmp: Path, name: str, extra: list[str]) -> GatewayProcess:
    gw = GatewayProcess(tmp / name, gpus="sim:2", token=None, extra=extra).start()
    try:
        sync_runs(gw, TRIVIAL, 2)  # warm-up: first DB writes, the zygote's first fork
    except BaseException:
        gw.stop()
        raise
    return gw


def other_path_to_python() -> str | None:
    """The gateway's interpreter by another name (a symlink beside it), or None: with
    ``--python`` set to it the gateway starts jobs cold, as for any other interpreter."""
    here = Path(sys.executable)
    for alias in (here.with_name("python3"), here.with_name("python"), here.resolve()):
        if str(alias) != sys.executable and alias.exists() and alias.resolve() == here.resolve():
            return str(alias)
    return None


@dataclass
class Bench:
    tmp: Path
    runs: int
    heavy_runs: int
    lines: int
    rows: list[Row] = field(default_factory=list)
    cold_trivial: list[float] = field(default_factory=list)
    cold_lines: list[float] = field(default_factory=list)

    def trivial(self, gw: GatewayProcess, label: str, goal: float | None) -> None:
        ours, job, _ = sync_runs(gw, TRIVIAL, self.runs)
        self.rows.append(Row(f"trivial /run/sync, {label}", ours, self.cold_trivial, goal, job))

    def many_lines(self, gw: GatewayProcess, label: str, goal: float | None) -> None:
        ours, job, task_id = sync_runs(gw, LINES.format(n=self.lines), self.heavy_runs)
        check_lines(gw, task_id, self.lines)
        name = f"{self.lines // 1000}k lines, {label}"
        self.rows.append(Row(name, ours, self.cold_lines, goal, job))

    def torch(self, gw: GatewayProcess) -> None:
        ours, job, _ = sync_runs(gw, TORCH, self.heavy_runs)
        cold = cold_runs(TORCH, self.heavy_runs, self.tmp)
        self.rows.append(Row("import torch job, --preload torch", ours, cold, 0.1, job))

    def baselines(self) -> None:
        self.cold_trivial = cold_runs(TRIVIAL, self.runs, self.tmp)
        self.cold_lines = cold_runs(LINES.format(n=self.lines), self.heavy_runs, self.tmp)

    def run(self, name: str, extra: list[str], *steps: Callable[[GatewayProcess], None]) -> None:
        gw = on_gateway(self.tmp, name, extra)
        try:
            for step in steps:
                step(gw)
        finally:
            gw.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="round trips per trivial case")
    parser.add_argument("--heavy-runs", type=int, default=5, help="runs of torch / lines jobs")
    parser.add_argument("--lines", type=int, default=200_000)
    args = parser.parse_args()
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="vrungpu-bench-") as name:
        b = Bench(Path(name), args.runs, args.heavy_runs, args.lines)
        b.baselines()
        warm = "zygote, no preload"
        b.run(
            "warm", [], lambda gw: b.trivial(gw, warm, 0.5), lambda gw: b.many_lines(gw, warm, 1.3)
        )
        if importlib.util.find_spec("torch") is not None:
            b.run(
                "torch",
                ["--preload", "torch"],
                lambda gw: b.trivial(gw, "--preload torch", 0.5),
                b.torch,
            )
        else:
            notes.append(
                "import torch row skipped: torch is not importable here "
                "(.venv/bin/pip install torch==2.13.0 installs the CPU build)"
            )
        alias = other_path_to_python()
        if alias is not None:
            cold = "cold (no zygote)"
            b.run(
                "cold",
                ["--python", alias],
                lambda gw: b.trivial(gw, cold, None),
                lambda gw: b.many_lines(gw, cold, None),
            )
        else:
            notes.append("cold-spawn rows skipped: no other path to this interpreter")
    report(b.rows, notes, args.runs, args.heavy_runs)


def report(rows: list[Row], notes: list[str], runs: int, heavy_runs: int) -> None:
    print(
        f"p50 seconds; {runs} trivial runs, {heavy_runs} of the others; "
        f"{os.cpu_count()} CPUs; baseline: {Path(sys.executable).name} -u script.py > file"
    )
    head = f"{'ours':>9}{'job s':>8}{'cold':>9}{'ratio':>8}{'goal':>10}{'met':>6}"
    print(f"{'case':<46}{head}")
    for row in rows:
        row.print()
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()

"""Live output: lines/s delivered to WebSocket subscribers, and what watching costs the job.

Runs one job that prints N short lines (default 1,000,000) and times it from inside (its own
wall time, from its first print to its last):

- baseline: the same script run directly with its output going to a file (no gateway);
- through a real gateway with no client, with 1 and 4 fast subscribers (each reads every line,
  from offset 0), and with 2 clients that stopped reading (a firehose client and a subscriber,
  stalled by a first, shorter job) -- those must not slow the job;

and prints, per case, the job's wall time, its ratios to the baseline and to the gateway with
no client, the lines/s delivered to each subscriber (first to last line received; a subscriber
is `VrunGPUClient.stream`, which resumes from the log file after a gap, as any client that
falls behind must) and how long after the job's end the last line arrived.

Run: ``.venv/bin/python bench/bench_stream.py [--lines 1000000] [--repeat 1]``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import websocket

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support import TOKEN, Api, GatewayProcess  # noqa: E402
from vrungpu_magic.client import VrunGPUClient  # noqa: E402

JOB = (
    "import time\ntime.sleep({delay})\nt = time.monotonic()\n"
    "for i in range({n}):\n    print(i)\n"
    "print('WALL', time.monotonic() - t)\n"
)


@dataclass
class Reader:
    """A fast subscriber: `VrunGPUClient.stream` in a thread (it resumes by itself after a gap,
    as any real client must when it falls behind a job on a busy machine)."""

    url: str
    lines: int = 0
    first: float | None = None
    last: float | None = None
    done: threading.Event = field(default_factory=threading.Event)
    stalled = False

    def subscribe(self, task_id: str) -> None:
        threading.Thread(target=self._read, args=(task_id,), daemon=True).start()

    def _read(self, task_id: str) -> None:
        for event in VrunGPUClient(self.url, TOKEN).stream(task_id, timeout=600):
            if event["type"] == "output":
                now = time.monotonic()
                self.first = self.first or now
                self.last = now
                self.lines += len(event["lines"])
        self.done.set()

    def rate(self) -> float:
        if not (self.first and self.last and self.last > self.first):
            return 0.0
        return self.lines / (self.last - self.first)

    def close(self) -> None:
        pass


class StalledReader:
    """A client that never reads, on the firehose or subscribed (a small receive buffer makes
    it stall at once)."""

    stalled = True
    lines = 0
    last = None

    def __init__(self, url: str, *, firehose: bool = False) -> None:
        self.firehose = firehose
        ws_url = url.replace("http://", "ws://") + f"/ws?token={TOKEN}"
        opts = {"sockopt": ((socket.SOL_SOCKET, socket.SO_RCVBUF, 8192),)}
        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True, **opts)

    def subscribe(self, task_id: str) -> None:
        if not self.firehose:
            self.ws.send(json.dumps({"type": "subscribe", "task_id": task_id, "offset": 0}))

    def rate(self) -> float:
        return 0.0

    def close(self) -> None:
        self.ws.shutdown()


def baseline(n: int, tmp: Path) -> float:
    script = tmp / "job.py"
    script.write_text(JOB.format(n=n, delay=0))
    out = tmp / "job.out"
    with open(out, "wb") as fh:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        subprocess.run([sys.executable, "-u", str(script)], stdout=fh, env=env, check=True)
    return float(out.read_text().rsplit("WALL", 1)[1])


def gateway_run(api: Api, n: int, readers: list[Reader | StalledReader]) -> tuple[float, float]:
    """The job's wall time, and seconds from its end until every fast reader had it all."""
    task_id = api.submit(JOB.format(n=n, delay=0.5))
    for reader in readers:
        reader.subscribe(task_id)
    while api.task(task_id)["status"] not in ("completed", "failed", "cancelled"):
        time.sleep(0.05)
    ended = time.monotonic()
    for reader in readers:
        if isinstance(reader, Reader):
            reader.done.wait(600)
    lag = max([r.last or ended for r in readers if not r.stalled] or [ended]) - ended
    tail = api.get(f"/task/{task_id}/logs", params={"stream": "stdout", "tail": 1}).json()
    return float(tail["lines"][-1].split()[1]), max(0.0, lag)


CASES = [  # (name, fast subscribers, stalled clients)
    ("gateway, no client", 0, 0),
    ("gateway, 1 subscriber", 1, 0),
    ("gateway, 4 subscribers", 4, 0),
    ("gateway, 2 stalled clients", 0, 2),
]


def run_case(gw: GatewayProcess, n: int, fast: int, stalled: int) -> tuple[float, float, float]:
    """One run: the job's wall time, the slowest subscriber's lines/s, the delivery lag."""
    readers: list[Reader | StalledReader] = [Reader(gw.url) for _ in range(fast)]
    if stalled:  # a firehose client and a subscriber, stalled by a first, shorter job
        readers += [StalledReader(gw.url, firehose=True), StalledReader(gw.url)]
        gateway_run(gw.api, n // 5, readers)
    wall, lag = gateway_run(gw.api, n, readers)
    if any(r.lines != n + 1 for r in readers if isinstance(r, Reader)):
        raise SystemExit("a subscriber missed lines")
    rate = min([r.rate() for r in readers if isinstance(r, Reader)] or [0.0])
    for reader in readers:
        reader.close()
    return wall, rate, lag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=1, help="runs per case (best is shown)")
    args = parser.parse_args()
    n = args.lines
    with tempfile.TemporaryDirectory(prefix="vrungpu-bench-") as tmp:
        base = min(baseline(n, Path(tmp)) for _ in range(args.repeat))
        gw = GatewayProcess(Path(tmp) / "data", gpus="sim:1").start()
        try:
            print(f"{n:,} lines; {os.cpu_count()} CPUs; best of {args.repeat}")
            head = f"{'job s':>7}{'x file':>8}{'x no client':>13}{'lines/s/sub':>13}{'lag s':>7}"
            print(f"{'case':<30}{head}")
            print(f"{'python job.py > file':<30}{base:>7.2f}{1.0:>8.2f}{'-':>13}{'-':>13}{'-':>7}")
            runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name, *_ in CASES}
            for _ in range(args.repeat):  # round robin: load that drifts hits every case alike
                for name, fast, stalled in CASES:
                    runs[name].append(run_case(gw, n, fast, stalled))
            alone = min(runs[CASES[0][0]])[0]
            for name, fast, _ in CASES:
                wall, rate, lag = min(runs[name])
                shown = (f"{rate:,.0f}", f"{lag:.2f}") if fast else ("-", "-")
                print(
                    f"{name:<30}{wall:>7.2f}{wall / base:>8.2f}{wall / alone:>13.2f}"
                    f"{shown[0]:>13}{shown[1]:>7}"
                )
        finally:
            gw.stop()


if __name__ == "__main__":
    main()

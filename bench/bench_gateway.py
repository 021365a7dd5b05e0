"""The gateway's responsiveness: request latency while a sync job runs, and gpu_update cadence.

Two figures that used to be assertions in tests (tests assert the behaviour; speed lives here):

- latency of ``GET /`` while a ``POST /run/sync`` request waits on a running job, beside the
  same requests with nothing running (the baseline, measured in this run), and the ratio;
- the interval between ``gpu_update`` messages one client receives after N clients came and
  went, beside the interval a client sees on a gateway that never had another client, and the
  ratio (one timer for all clients: it stays ~1.0; a timer per past client would make it ~1/N).

Run: ``.venv/bin/python bench/bench_gateway.py [--requests 200] [--updates 4] [--cycles 5]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import websocket

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support import TOKEN, Api, Gate, GatewayProcess, wait_for  # noqa: E402


def latencies(api: Api, n: int) -> list[float]:
    took = []
    for _ in range(n):
        start = time.perf_counter()
        api.get("/").raise_for_status()
        took.append(time.perf_counter() - start)
    return took


def during_sync_job(gw: GatewayProcess, n: int, gate: Gate) -> list[float]:
    """Latencies of ``n`` requests made while a /run/sync request waits on its job."""
    api = gw.api
    worker = threading.Thread(target=lambda: api.post("/run/sync", json={"code": gate.code}))
    worker.start()
    try:
        wait_for(lambda: api.get("/gpu/pool").json()["busy_gpus"], 30, what="sync job running")
        return latencies(Api(gw.url, TOKEN), n)
    finally:
        gate.open()
        worker.join()


def gpu_update_intervals(gw: GatewayProcess, updates: int) -> list[float]:
    url = gw.url.replace("http://", "ws://") + f"/ws?token={TOKEN}"
    conn = websocket.create_connection(url, timeout=30, suppress_origin=True)
    stamps: list[float] = []
    try:
        while len(stamps) < updates + 1:
            if json.loads(conn.recv())["type"] == "gpu_update":
                stamps.append(time.monotonic())
    finally:
        conn.close()
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def come_and_go(gw: GatewayProcess, cycles: int) -> None:
    url = gw.url.replace("http://", "ws://") + f"/ws?token={TOKEN}"
    for _ in range(cycles):
        conn = websocket.create_connection(url, timeout=30, suppress_origin=True)
        conn.recv()
        conn.close()


def row(name: str, ours: float, base: float, unit: str) -> None:
    print(f"{name:<44}{ours:>10.4f}{base:>10.4f}{ours / base:>8.2f}  {unit}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--updates", type=int, default=4, help="gpu_update intervals per case")
    parser.add_argument("--cycles", type=int, default=5, help="clients that come and go")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vrungpu-bench-") as tmp:
        gw = GatewayProcess(Path(tmp) / "data").start()
        try:
            idle = latencies(gw.api, args.requests)
            busy = during_sync_job(gw, args.requests, Gate(Path(tmp) / "gate"))
            fresh = gpu_update_intervals(gw, args.updates)
            come_and_go(gw, args.cycles)
            after = gpu_update_intervals(gw, args.updates)
        finally:
            gw.stop()
    print(f"{'figure':<44}{'ours':>10}{'baseline':>10}{'ratio':>8}")
    row(
        "GET / p50 during a sync job (vs idle)",
        statistics.median(busy),
        statistics.median(idle),
        "s",
    )
    row("GET / max during a sync job (vs idle)", max(busy), max(idle), "s")
    row(
        f"gpu_update interval after {args.cycles} clients (vs none)",
        statistics.median(after),
        statistics.median(fresh),
        "s",
    )


if __name__ == "__main__":
    main()

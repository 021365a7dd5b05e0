"""Remote kernels: what a kernel on the gateway costs beside a local ipykernel, measured in the
same run (issue 10's figures, each with its baseline, the ratio and the goal):

- execute round trip of a trivial cell (``1``: request -> reply and iopub idle), p50 and p95
  over ``--runs``, through the gateway's channels WebSocket against a local ipykernel driven by
  jupyter_client (goal <= 2x);
- start to first result (``POST /api/kernels``, open the channels, execute ``1``) of a cold
  kernel and of a prespawned one (``--prespawn-kernels 1``), against starting a local kernel
  and executing the same (goal: prespawned sooner than the local start, ratio < 1);
- first ``import torch`` in a new session (start + the import cell), cold against prespawned
  with ``--preload torch`` (goal: prespawned >= 10x faster, ratio <= 0.1); skipped with a note
  when torch is not importable.

The gateway runs with ``--gpus sim:2``; its kernels are forked from the warm zygote. Run:
``.venv/bin/python bench/bench_kernels.py [--runs 200] [--starts 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.kernel_helpers import Channels  # noqa: E402
from tests.support import GatewayProcess, wait_for  # noqa: E402

SPEC = "vrungpu-1gpu"


@dataclass
class Row:
    name: str
    ours: float
    base: float
    goal: str
    met: bool

    def print(self) -> None:
        ratio = self.ours / self.base
        print(
            f"{self.name:<50}{self.ours * 1000:>10.1f}{self.base * 1000:>10.1f}{ratio:>8.2f}"
            f"{self.goal:>12}{'yes' if self.met else 'NO':>6}"
        )


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the gateway side ------------------------------------------------------------------------------
async def gateway_kernel(gw: GatewayProcess, code: str) -> tuple[float, str, Channels]:
    """Start a kernel, open its channels, run ``code``: (seconds, kernel id, channels)."""
    began = time.perf_counter()
    res = await asyncio.to_thread(gw.api.post, "/api/kernels", json={"name": SPEC})
    assert res.status_code == 201, res.text
    kernel_id = res.json()["id"]
    url = gw.url.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"
    ch = await Channels.open(url, gw.token)
    executed = await ch.execute(code, timeout_s=300)
    assert executed.status == "ok", executed.reply
    return time.perf_counter() - began, kernel_id, ch


async def end_kernel(gw: GatewayProcess, kernel_id: str, ch: Channels) -> None:
    await ch.close()
    await asyncio.to_thread(gw.api.delete, f"/api/kernels/{kernel_id}")


def spares_ready(gw: GatewayProcess) -> int:
    return gw.log().count("spare kernel ")


async def starts(gw: GatewayProcess, code: str, count: int, *, prespawned: bool) -> list[float]:
    times = []
    for _ in range(count):
        if prespawned:
            ready = spares_ready(gw)
            await asyncio.to_thread(
                wait_for, lambda r=ready: spares_ready(gw) >= max(r, 1), 300, what="a spare"
            )
        seconds, kernel_id, ch = await gateway_kernel(gw, code)
        times.append(seconds)
        await end_kernel(gw, kernel_id, ch)
        if prespawned:  # the replacement of the spare just taken
            await asyncio.to_thread(
                wait_for, lambda r=ready: spares_ready(gw) > r, 300, what="a new spare"
            )
    return times


async def gateway_round_trips(gw: GatewayProcess, runs: int) -> list[float]:
    _, kernel_id, ch = await gateway_kernel(gw, "1")
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        await ch.execute("1")
        times.append(time.perf_counter() - began)
    await end_kernel(gw, kernel_id, ch)
    return times


# -- the local baseline ---------------------------------------------------------------------------
async def local_execute(client: object, code: str) -> None:
    """Execute and wait for the reply and iopub idle, as the gateway figures do."""
    kc: object = client
    msg_id = kc.execute(code)  # type: ignore[attr-defined]
    reply = idle = False
    while not (reply and idle):
        if not reply:
            msg = await kc.get_shell_msg(timeout=60)  # type: ignore[attr-defined]
            reply = msg["parent_header"].get("msg_id") == msg_id
        while not idle:
            msg = await kc.get_iopub_msg(timeout=60)  # type: ignore[attr-defined]
            mine = msg["parent_header"].get("msg_id") == msg_id
            idle = mine and msg["content"].get("execution_state") == "idle"


async def local_kernel(code: str) -> tuple[float, AsyncKernelManager, object]:
    began = time.perf_counter()
    km = AsyncKernelManager(kernel_name="python3")
    await km.start_kernel()
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=120)
    await local_execute(kc, code)
    return time.perf_counter() - began, km, kc


async def local_starts(code: str, count: int) -> list[float]:
    times = []
    for _ in range(count):
        seconds, km, kc = await local_kernel(code)
        times.append(seconds)
        kc.stop_channels()  # type: ignore[attr-defined]
        await km.shutdown_kernel(now=True)
    return times


async def local_round_trips(runs: int) -> list[float]:
    _, km, kc = await local_kernel("1")
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        await local_execute(kc, "1")
        times.append(time.perf_counter() - began)
    kc.stop_channels()  # type: ignore[attr-defined]
    await km.shutdown_kernel(now=True)
    return times


# -- the figures ----------------------------------------------------------------------------------
async def with_gateway(
    root: Path, name: str, extra: list[str], work: Callable[[GatewayProcess], Awaitable[object]]
) -> object:
    gw = GatewayProcess(root / name, extra=["--max-kernels", "16", *extra]).start()
    try:
        return await work(gw)
    finally:
        gw.stop()


async def run(args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="bench-kernels-") as tmp:
        root = Path(tmp)
        ours = await with_gateway(root, "rt", [], lambda gw: gateway_round_trips(gw, args.runs))
        base = await local_round_trips(args.runs)
        assert isinstance(ours, list)
        for label, q in (("p50", 0.5), ("p95", 0.95)):
            o, b = p(ours, q), p(base, q)
            rows.append(Row(f"execute round trip {label}", o, b, "<= 2x", o <= 2 * b))
        local = statistics.median(await local_starts("1", args.starts))
        cold = await with_gateway(
            root, "cold", [], lambda gw: starts(gw, "1", args.starts, prespawned=False)
        )
        warm = await with_gateway(
            root,
            "warm",
            ["--prespawn-kernels", "1"],
            lambda gw: starts(gw, "1", args.starts, prespawned=True),
        )
        assert isinstance(cold, list) and isinstance(warm, list)
        c, w = statistics.median(cold), statistics.median(warm)
        rows.append(Row("start to first result, cold (vs local)", c, local, "-", True))
        rows.append(
            Row("start to first result, prespawned (vs local)", w, local, "< 1x", w < local)
        )
        if importlib.util.find_spec("torch") is None:
            notes.append("torch is not importable: the import torch figure is skipped")
            return rows, notes
        code = "import torch"
        cold_t = await with_gateway(
            root, "torch-cold", [], lambda gw: starts(gw, code, args.starts, prespawned=False)
        )
        warm_t = await with_gateway(
            root,
            "torch-warm",
            ["--prespawn-kernels", "1", "--preload", "torch"],
            lambda gw: starts(gw, code, args.starts, prespawned=True),
        )
        assert isinstance(cold_t, list) and isinstance(warm_t, list)
        c, w = statistics.median(cold_t), statistics.median(warm_t)
        rows.append(
            Row("new session + import torch, prespawned (vs cold)", w, c, "<= 0.1x", w <= c / 10)
        )
    return rows, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="round trips measured")
    parser.add_argument("--starts", type=int, default=5, help="kernel starts per figure")
    args = parser.parse_args()
    rows, notes = asyncio.run(run(args))
    print(f"{'case':<50}{'ours ms':>10}{'base ms':>10}{'ratio':>8}{'goal':>12}{'met':>6}")
    for row in rows:
        row.print()
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()

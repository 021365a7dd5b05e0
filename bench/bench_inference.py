"""Inference latency: warm model workers against a fresh interpreter per request.

Starts a real gateway, registers a ~1 MB TorchScript MLP, and measures end-to-end latency of
`POST /model/{id}/inference` with `sync: true` (HTTP, task bookkeeping, worker, result):

- cold: the first request for a freshly registered copy (worker start, torch import, load);
- warm: later requests to the same model (the loaded worker is reused);
- baseline, in the same run: the seed's way, `POST /run/sync` with code that imports torch,
  loads the same file and predicts the same input: a fresh interpreter per request.

Run: ``.venv/bin/python bench/bench_inference.py [--gpus sim:2|auto] [--warm 200]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from tests.model_helpers import torchscript_bytes  # noqa: E402
from tests.support import Api, GatewayProcess  # noqa: E402

FEATURES, HIDDEN, BATCH = 256, 512, 8


def build_model() -> bytes:
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, FEATURES)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torchscript_bytes(mlp, torch.zeros(1, FEATURES))


def timed(call: Callable[[], dict[str, Any]]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    task = call()
    elapsed_ms = (time.perf_counter() - started) * 1000
    if task.get("status") != "completed":
        raise SystemExit(f"request failed: {task.get('error') or task}")
    return elapsed_ms, task


def register(api: Api, content: bytes, name: str) -> str:
    res = api.post(
        "/model/register", files={"model_file": ("mlp.pt", content)}, data={"name": name}
    )
    res.raise_for_status()
    return res.json()["model_id"]


def infer(api: Api, model_id: str, inputs: list[list[float]]) -> dict[str, Any]:
    body = {"input_data": {"inputs": inputs}, "sync": True}
    return api.post(f"/model/{model_id}/inference", json=body, timeout=600).json()


def baseline_code(model_file: Path, inputs: list[list[float]]) -> str:
    return (
        "import json, torch, warnings\nwarnings.simplefilter('ignore')\n"
        f"model = torch.jit.load({str(model_file)!r}).eval()\n"
        f"x = torch.tensor(json.loads({json.dumps(inputs)!r}))\n"
        "with torch.inference_mode():\n    out = model(x).tolist()\n"
        "print(json.dumps(out[0][:8]))\n"
    )


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95


def measure(api: Api, gateway: GatewayProcess, args: argparse.Namespace) -> dict[str, list[float]]:
    content = build_model()
    inputs = torch.randn(BATCH, FEATURES, generator=torch.Generator().manual_seed(1)).tolist()
    results: dict[str, list[float]] = {"cold": [], "warm": [], "baseline": []}
    for i in range(args.cold):
        model_id = register(api, content, f"cold-{i}")
        results["cold"].append(timed(lambda m=model_id: infer(api, m, inputs))[0])
        api.delete(f"/model/{model_id}").raise_for_status()  # unload: the next one is cold too
    model_id = register(api, content, "warm")
    _, first = timed(lambda: infer(api, model_id, inputs))
    for _ in range(args.warm):
        results["warm"].append(timed(lambda: infer(api, model_id, inputs))[0])
    starts = api.get("/models/workers").json()["worker_starts"]
    model_file = gateway.data_dir / "models" / model_id / "mlp.pt"
    code = baseline_code(model_file, inputs)
    for _ in range(args.baseline):
        elapsed, task = timed(lambda: api.post("/run/sync", json={"code": code}).json())
        results["baseline"].append(elapsed)
    same = json.loads(task["stdout"]) == first["result"]["outputs"][0][:8]
    print(
        f"worker processes started: {starts} (cold samples + 1 for the warm model); "
        f"baseline output equals the warm worker's: {same}"
    )
    return results


def report(results: dict[str, list[float]], kind: str) -> None:
    size_mb = (FEATURES * HIDDEN * 2 + HIDDEN + FEATURES) * 4 / 2**20
    print(
        f"\nInference latency, end to end over HTTP: TorchScript MLP {FEATURES}-{HIDDEN}-"
        f"{FEATURES} ({size_mb:.1f} MB of weights), batch {BATCH}, gateway GPUs: {kind}"
    )
    print(f"{'':42} {'n':>5} {'p50 ms':>10} {'p95 ms':>10}")
    rows = [
        ("baseline: fresh interpreter per request", "baseline"),
        ("warm workers: cold start (first request)", "cold"),
        ("warm workers: warm (worker reused)", "warm"),
    ]
    for label, key in rows:
        p50, p95 = percentiles(results[key])
        print(f"{label:42} {len(results[key]):>5} {p50:>10.1f} {p95:>10.1f}")
    base, warm, cold = (percentiles(results[k]) for k in ("baseline", "warm", "cold"))
    print(
        f"\nratio baseline / warm: p50 {base[0] / warm[0]:.0f}x, p95 {base[1] / warm[1]:.0f}x; "
        f"cold / warm p50: {cold[0] / warm[0]:.0f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", default="sim:2", help="the gateway's --gpus (sim:2, auto, ...)")
    parser.add_argument("--cold", type=int, default=5, help="cold-start samples")
    parser.add_argument("--warm", type=int, default=200, help="warm samples")
    parser.add_argument("--baseline", type=int, default=10, help="fresh-interpreter samples")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vrungpu-bench-") as tmp:
        gateway = GatewayProcess(Path(tmp) / "data", gpus=args.gpus).start()
        try:
            results = measure(gateway.api, gateway, args)
        finally:
            gateway.stop()
    report(results, args.gpus)


if __name__ == "__main__":
    main()

"""Helpers of the registry and inference tests: small models and registering them."""

from __future__ import annotations

import io
import textwrap
import warnings
from typing import Any

from tests.support import Api, wait_for

# A model served by a handler.py that needs no torch: workers start in milliseconds.
PLAIN_HANDLER = textwrap.dedent("""
    import os, sys, time

    def load(model_dir):
        print("loading from", os.path.basename(model_dir))
        with open(os.path.join(model_dir, "weights.txt")) as fh:
            return float(fh.read())

    def predict(model, data):
        if data.get("fail"):
            raise ValueError("bad input: " + str(data["fail"]))
        if data.get("crash"):
            os._exit(3)
        if data.get("sleep"):
            time.sleep(data["sleep"])
        print("scaling", len(data["x"]), "values")
        print("a warning", file=sys.stderr)
        return {"y": [model * v for v in data["x"]], "pid": os.getpid()}
""")


def register_plain(api: Api, name: str = "plain", scale: float = 2.0, **fields: Any) -> dict:
    """Register the torch-free model above (weights.txt + handler.py) by upload."""
    files = [
        ("model_file", ("weights.txt", str(scale).encode())),
        ("files", ("handler.py", PLAIN_HANDLER.encode())),
    ]
    res = api.post("/model/register", files=files, data={"name": name, **fields})
    assert res.status_code == 201, res.text
    return res.json()


def register_bytes(api: Api, name: str, filename: str, content: bytes, **fields: Any) -> dict:
    res = api.post(
        "/model/register", files={"model_file": (filename, content)}, data={"name": name, **fields}
    )
    assert res.status_code == 201, res.text
    return res.json()


def infer(api: Api, model_id: str, input_data: Any, **options: Any) -> dict[str, Any]:
    """Synchronous inference: the finished task."""
    res = api.post(
        f"/model/{model_id}/inference", json={"input_data": input_data, "sync": True, **options}
    )
    assert res.status_code == 200, res.text
    return res.json()


def workers(api: Api) -> dict[str, Any]:
    return api.get("/models/workers").json()


def wait_no_workers(api: Api, timeout_s: float = 20) -> dict[str, Any]:
    return wait_for(
        lambda: (w := workers(api))["workers"] == [] and w, timeout_s, what="no warm workers"
    )


def torchscript_bytes(module: Any, example: Any) -> bytes:
    import torch

    with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.x, still supported
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(module, example)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    return buffer.getvalue()

"""A warm model worker: loads one registered model once, then answers predict requests.

The gateway's worker pool (``engine/workers.py``) starts it as
``python worker_main.py --fd N --model-dir DIR --artifact NAME`` in its own session, with
``CUDA_VISIBLE_DEVICES`` set to the slot the scheduler gave it and the model folder as cwd.
It speaks JSON lines over the socket ``--fd``: first ``{"type": "ready"}`` (or
``{"type": "load_error"}``, then it exits), then one reply per request
``{"id", "input": <path>, "output": <path>}``: it reads the input JSON file, calls
``predict`` and writes the result JSON file. Inputs are data, never code. What the handler
prints is captured and sent back with the reply, so it lands in the requesting task's log.

How a model is served: ``handler.py`` in the model folder (``load(model_dir)`` once, then
``predict(model, input_data)``), else a built-in handler chosen by the artifact: TorchScript,
``torch.export`` programs and whole pickled ``torch.nn.Module``s take
``{"inputs": <nested list>}`` and return ``{"outputs": ...}``; pickled objects with a
``predict`` method (scikit-learn) return ``{"predictions": [...]}``.

This file imports only the standard library (torch when a model needs it) because it may
run under another interpreter than the gateway's.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import pickle
import socket
import sys
import threading
import time
import traceback
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

HANDLER_FILE = "handler.py"
TORCH_SUFFIXES = (".pt", ".pth", ".pt2", ".ckpt", ".bin")
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
MAX_CAPTURE = 64 * 1024
MAX_ERROR = 1000
PARENT_CHECK_S = 1.0
MODEL_DIR_VAR = "VRUNGPU_MODEL_DIR"

Predict = Callable[[Any], Any]


class LoadError(Exception):
    """The model cannot be served as registered; the message says what to do."""


def one_line(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"the handler called sys.exit({exc.code!r})"
    text = str(exc).strip().splitlines()
    message = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return message[:MAX_ERROR]


def _tail(buffer: io.StringIO) -> str:
    return buffer.getvalue()[-MAX_CAPTURE:]


# -- loading -----------------------------------------------------------------------------------
def _import_handler(model_dir: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("vrungpu_model_handler", model_dir / HANDLER_FILE)
    if spec is None or spec.loader is None:
        raise LoadError("cannot import handler.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    for name in ("load", "predict"):
        if not callable(getattr(module, name, None)):
            raise LoadError(
                f"handler.py must define load(model_dir) and predict(model, input_data)"
                f"; {name} is missing"
            )
    return module


def load_model(model_dir: Path, artifact: str) -> tuple[str, Predict]:
    """(handler kind, predict function) for the model in ``model_dir``."""
    if (model_dir / HANDLER_FILE).is_file():
        module = _import_handler(model_dir)
        model = module.load(str(model_dir))
        return HANDLER_FILE, lambda data: module.predict(model, data)
    path = model_dir / artifact
    if not path.is_file():
        raise LoadError(f"no handler.py and no file {artifact!r} in the model folder")
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return "pickle", _estimator_predict(_load_pickle(path))
    if suffix in TORCH_SUFFIXES:
        return _load_torch(path)
    raise LoadError(
        f"no built-in handler for {artifact!r}: register a handler.py "
        "(load(model_dir), predict(model, input_data)) with it"
    )


def _load_pickle(path: Path) -> Any:
    if path.suffix.lower() == ".joblib":
        import joblib  # scikit-learn's own dependency

        return joblib.load(path)
    with open(path, "rb") as fh:
        return pickle.load(fh)


def _estimator_predict(model: Any) -> Predict:
    if not callable(getattr(model, "predict", None)):
        raise LoadError(
            f"the pickled {type(model).__name__} has no predict() method: "
            "register a handler.py with it"
        )

    def predict(data: Any) -> Any:
        inputs = data.get("inputs") if isinstance(data, dict) else data
        if not isinstance(inputs, list):
            raise ValueError('input_data must be {"inputs": [[...], ...]} or that list itself')
        return {"predictions": model.predict(inputs)}

    return predict


def _torch_archive_kind(path: Path) -> str:
    if not zipfile.is_zipfile(path):
        return "pickle"
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any(n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    if path.suffix.lower() == ".pt2" or any(n.endswith("/archive_format") for n in names):
        return "torch_export"
    return "pickle"


def _load_torch(path: Path) -> tuple[str, Predict]:
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind = _torch_archive_kind(path)
    if kind == "torchscript":
        with warnings.catch_warnings():  # deprecated in torch 2.x, still what many teams ship
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(str(path), map_location=device)
    elif kind == "torch_export":
        model = torch.export.load(str(path)).module().to(device)
    else:
        model = torch.load(path, map_location=device, weights_only=False)
        kind = "torch_module"
        if isinstance(model, dict):
            raise LoadError(
                f"{path.name} holds a state_dict (weights only), not a model: "
                "register it with a handler.py whose load() builds the network"
            )
        if not isinstance(model, torch.nn.Module):
            raise LoadError(f"{path.name} holds a {type(model).__name__}, not a torch module")
    with contextlib.suppress(NotImplementedError, RuntimeError):  # exported modules refuse eval()
        model.eval()
    return kind, _torch_predict(model, device)


def _torch_predict(model: Any, device: Any) -> Predict:
    import torch

    def predict(data: Any) -> Any:
        inputs = data.get("inputs") if isinstance(data, dict) else data
        if not isinstance(inputs, list | int | float) or isinstance(inputs, bool):
            raise ValueError('input_data must be {"inputs": <nested list of numbers>}')
        try:
            x = torch.as_tensor(inputs, dtype=torch.float32, device=device)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f'"inputs" must be a nested list of numbers: {exc}') from None
        with torch.inference_mode():
            return {"outputs": model(x)}

    return predict


# -- the request loop ----------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    """json's fallback: tensors, numpy arrays and numpy scalars all have ``tolist()``."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"predict() returned a {type(value).__name__}, which is not JSON")


def _write_result(path: str, result: Any) -> None:
    try:
        text = json.dumps(result, default=_jsonable, allow_nan=False)
    except ValueError:
        raise ValueError("predict() returned NaN or infinity, which JSON cannot carry") from None
    scratch = f"{path}.part"
    with open(scratch, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(scratch, path)


def boot(model_dir: Path, artifact: str) -> tuple[dict[str, Any], Predict | None]:
    """Load the model; the message for the gateway and the predict function (None: failed)."""
    out, err = io.StringIO(), io.StringIO()
    started = time.perf_counter()
    predict: Predict | None = None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            kind, predict = load_model(model_dir, artifact)
        message: dict[str, Any] = {"type": "ready", "handler": kind}
    except LoadError as exc:
        message = {"type": "load_error", "error": str(exc)[:MAX_ERROR]}
    except (Exception, SystemExit) as exc:
        message = {
            "type": "load_error",
            "error": one_line(exc),
            "traceback": traceback.format_exc()[-MAX_CAPTURE:],
        }
    message.update(
        pid=os.getpid(),
        load_ms=round((time.perf_counter() - started) * 1000, 3),
        stdout=_tail(out),
        stderr=_tail(err),
    )
    return message, predict


def serve_one(predict: Predict, request: dict[str, Any]) -> dict[str, Any]:
    """Answer one request: read its input file, predict, write its output file."""
    out, err = io.StringIO(), io.StringIO()
    started = time.perf_counter()
    reply: dict[str, Any] = {"id": request.get("id"), "ok": True}
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            with open(request["input"], encoding="utf-8") as fh:
                data = json.load(fh)
            result = predict(data)
        _write_result(request["output"], result)
    except (Exception, SystemExit) as exc:
        reply.update(ok=False, error=one_line(exc), traceback=traceback.format_exc()[-MAX_CAPTURE:])
    reply.update(
        predict_ms=round((time.perf_counter() - started) * 1000, 3),
        stdout=_tail(out),
        stderr=_tail(err),
    )
    return reply


def _exit_with_parent() -> None:
    """End this worker when whoever started it (the gateway, or its Ray actor) is gone, even
    in the middle of a predict that never returns: its GPU is handed to the next worker."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="VrunGPU model worker (started by the gateway)")
    parser.add_argument("--fd", type=int, required=True, help="the socket to the gateway")
    parser.add_argument(
        "--model-dir",
        default=os.environ.get(MODEL_DIR_VAR),
        help=f"the registered model's folder (default: ${MODEL_DIR_VAR}, which, unlike the "
        "command line, other users cannot read)",
    )
    parser.add_argument("--artifact", default="", help="the model file inside that folder")
    args = parser.parse_args(argv)
    if not args.model_dir:
        parser.error(f"--model-dir or ${MODEL_DIR_VAR} is required")
    model_dir = Path(args.model_dir).resolve()
    sys.path[0] = str(model_dir)  # model code imports as in training, not this package's folder
    sock = socket.socket(fileno=args.fd)
    reader, writer = sock.makefile("rb"), sock.makefile("wb")

    def send(message: dict[str, Any]) -> None:
        writer.write(json.dumps(message, default=str).encode() + b"\n")
        writer.flush()

    _exit_with_parent()
    print(f"worker {os.getpid()}: loading {model_dir}", file=sys.stderr, flush=True)
    message, predict = boot(model_dir, args.artifact)
    send(message)
    if predict is None:
        print(f"worker {os.getpid()}: {message['error']}", file=sys.stderr, flush=True)
        return 1
    for line in reader:  # EOF: the gateway let go of this worker
        send(serve_one(predict, json.loads(line)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

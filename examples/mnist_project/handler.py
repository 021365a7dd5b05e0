"""Inference handler of the digits example for the VrunGPU model registry: load() and predict().

The registry keeps this file beside ``model.pt``, ``model.py`` and ``utils.py`` (and optionally
``config.json``) in one model folder, calls ``load(model_dir)`` once and then
``predict(model, input_data)`` per request, where ``input_data`` is
``{"images": [<8x8 nested list of raw 0-16 pixels>, ...]}`` and the answer is
``{"predictions": [<digit>, ...]}``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

MODEL_FILE = "model.pt"
IMAGE_SHAPE = (8, 8)


def _import_file(model_dir: Path, stem: str) -> ModuleType:
    """Import ``<model_dir>/<stem>.py`` under a name unique to that folder.

    A private name keeps the gateway's own modules called ``model`` or ``utils`` untouched.
    """
    path = model_dir / f"{stem}.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path.name} is missing from the model folder {model_dir}")
    tag = hashlib.sha1(str(model_dir).encode()).hexdigest()[:12]
    name = f"_vrungpu_digits_{tag}_{stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _read_config(model_dir: Path) -> dict[str, Any]:
    """The training config when it was registered too (for the layer sizes), else {}."""
    path = model_dir / "config.json"
    if not path.is_file():
        return {}
    config = json.loads(path.read_text(encoding="utf-8"))
    return config if isinstance(config, dict) else {}


def load(model_dir: str) -> nn.Module:
    """Build the network from the folder's model.py, load model.pt, eval mode, CUDA if any."""
    folder = Path(model_dir).resolve()
    model_module = _import_file(folder, "model")
    utils = _import_file(folder, "utils")
    config = _read_config(folder)
    device = utils.select_device()
    model = model_module.build_model(config)
    weights = folder / str(config.get("model_file", MODEL_FILE))
    state = torch.load(weights, map_location=device, weights_only=True)
    model.load_state_dict(state)
    model.to(device).eval()
    model.digits_utils = utils  # predict() scales with the very function training used
    return model


def _validated_images(input_data: Any) -> np.ndarray:
    """The "images" of a request as a float array (N, 8, 8); ValueError says what is wrong."""
    if not isinstance(input_data, dict) or "images" not in input_data:
        raise ValueError('input_data must be an object with an "images" list of 8x8 images')
    images = input_data["images"]
    if not isinstance(images, list) or not images:
        raise ValueError('"images" must be a non-empty list of 8x8 images')
    try:
        array = np.asarray(images, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError('"images" must hold 8x8 nested lists of numbers (0-16)') from None
    if array.ndim != 3 or array.shape[1:] != IMAGE_SHAPE:
        shape = "x".join(str(n) for n in array.shape)
        raise ValueError(f'"images" must have shape N x 8 x 8, got {shape}')
    if not np.isfinite(array).all():
        raise ValueError('"images" must not contain NaN or infinite values')
    return array


def _utils_for(model: nn.Module) -> ModuleType:
    """The utils module load() attached to ``model``, else the one beside this handler."""
    utils = model.__dict__.get("digits_utils")
    if isinstance(utils, ModuleType):
        return utils
    return _import_file(Path(__file__).resolve().parent, "utils")


def predict(model: nn.Module, input_data: dict[str, Any]) -> dict[str, list[int]]:
    """Classify raw 0-16 digit images; returns {"predictions": [int, ...]} in input order."""
    images = _validated_images(input_data)
    utils = _utils_for(model)
    labels = utils.predict_labels(model, utils.scale_images(images))
    return {"predictions": [int(label) for label in labels.tolist()]}

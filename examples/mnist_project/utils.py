"""Data, scaling, device, seeding and evaluation helpers shared by train.py and handler.py."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PIXEL_MAX = 16.0  # load_digits() pixel values are integers 0..16
IMAGE_SIDE = 8


def scale_images(images: Any) -> torch.Tensor:
    """Turn raw 0-16 digit images (N, 8, 8) into a float32 tensor (N, 1, 8, 8) in [0, 1].

    train.py and handler.py both call this, so training and inference scale identically.
    """
    array = np.asarray(images, dtype=np.float32).reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE)
    return torch.from_numpy(array / PIXEL_MAX)


def load_data(
    test_size: int = 300,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Load sklearn's digits; the LAST ``test_size`` samples are the held-out test set.

    Returns (x_train, y_train, x_test, y_test), images already scaled by scale_images().
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    if not 0 < test_size < len(digits.images):
        raise ValueError(f"test_size must be between 1 and {len(digits.images) - 1}")
    split = len(digits.images) - test_size
    x = scale_images(digits.images)
    y = torch.as_tensor(digits.target, dtype=torch.long)
    return x[:split], y[:split], x[split:], y[split:]


def random_shift(x: torch.Tensor, max_shift: int = 1) -> torch.Tensor:
    """Augment: move each image (N, 1, 8, 8) by up to ``max_shift`` pixels, zero-filling."""
    if max_shift <= 0:
        return x
    n, span = len(x), 2 * max_shift + 1
    padded = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, span, (n,), device=x.device)
    dx = torch.randint(0, span, (n,), device=x.device)
    grid = torch.arange(IMAGE_SIDE, device=x.device)
    rows = (dy[:, None] + grid)[:, :, None]
    cols = (dx[:, None] + grid)[:, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded[batch, 0, rows, cols].unsqueeze(1)


def select_device() -> torch.device:
    """CUDA when a GPU is visible (CUDA_VISIBLE_DEVICES may hide them all), else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a run is reproducible."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def set_threads(wanted: int = 1) -> None:
    """Use at most ``wanted`` CPU threads (never more than the machine has).

    The network is tiny: one thread is as fast as two on an idle CPU, much faster on a busy
    one (no oversubscription), and gives the same numbers on every machine.
    """
    torch.set_num_threads(max(1, min(wanted, os.cpu_count() or 1)))


@torch.no_grad()
def predict_labels(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Predicted class indices (on CPU) for scaled images ``x``, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    parts = [
        model(x[i : i + batch_size].to(device)).argmax(dim=1).cpu()
        for i in range(0, len(x), batch_size)
    ]
    model.train(was_training)
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy (0..1) of ``model`` on scaled images ``x`` with labels ``y``."""
    if len(y) == 0:
        return 0.0
    return (predict_labels(model, x) == y.cpu()).float().mean().item()

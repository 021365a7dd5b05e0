"""The network of the digits example: a small CNN for 1x8x8 images and 10 classes."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions, one 2x2 max-pool, and a two-layer classifier head."""

    def __init__(self, channels: int = 16, hidden: int = 64, dropout: float = 0.2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels * 2, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * 2 * 4 * 4, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch of shape (N, 1, 8, 8) to logits of shape (N, 10)."""
        return self.classifier(self.features(x))


def build_model(config: dict[str, Any] | None = None) -> DigitsCNN:
    """Build a DigitsCNN from the optional "channels", "hidden", "dropout" config keys."""
    config = config or {}
    return DigitsCNN(
        channels=int(config.get("channels", 16)),
        hidden=int(config.get("hidden", 64)),
        dropout=float(config.get("dropout", 0.2)),
    )

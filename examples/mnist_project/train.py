"""Training entry point of the digits example: reads config.json, trains, tests, saves model.pt.

Run from the project folder: ``python train.py [--epochs N] [--config config.json]``.
Prints ``[PROGRESS:<pct>:Epoch e/E loss=.. acc=..]`` once per epoch for the VrunGPU gateway.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

# isort: split
# Modules of this project folder (the gateway runs train.py with it as the cwd).
from model import build_model
from utils import evaluate, load_data, random_shift, select_device, set_seed, set_threads

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; each one overrides the matching config.json value."""
    parser = argparse.ArgumentParser(description="Train a small CNN on sklearn's 8x8 digits.")
    parser.add_argument("--config", default="config.json", help="path to the config file")
    parser.add_argument("--epochs", type=int, help="override config epochs")
    parser.add_argument("--lr", type=float, help="override config lr")
    parser.add_argument("--batch-size", type=int, dest="batch_size", help="override batch_size")
    parser.add_argument("--seed", type=int, help="override config seed")
    return parser.parse_args(argv)


def load_config(args: argparse.Namespace) -> dict[str, Any]:
    """Read the config (cwd first, then beside this file) and apply command-line overrides."""
    path = Path(args.config)
    if not path.is_file() and not path.is_absolute():
        path = HERE / args.config
    config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    for key in ("epochs", "lr", "batch_size", "seed"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    if int(config["epochs"]) < 1:
        raise SystemExit("epochs must be at least 1")
    return config


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: dict[str, Any],
) -> float:
    """One pass over (x, y) in a shuffled, shift-augmented order; returns the mean loss."""
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    order = torch.randperm(len(x), device=x.device)
    batch_size, max_shift = int(config["batch_size"]), int(config.get("max_shift", 0))
    total = 0.0
    for start in range(0, len(x), batch_size):
        idx = order[start : start + batch_size]
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(random_shift(x[idx], max_shift)), y[idx])
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(idx)
    return total / len(x)


def make_optimizer(
    model: nn.Module, config: dict[str, Any], n_train: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam with a one-cycle schedule whose peak learning rate is config "lr"."""
    lr = float(config["lr"])
    optimizer = torch.optim.Adam(
        model.parameters(), lr=lr, weight_decay=float(config.get("weight_decay", 0.0))
    )
    steps = int(config["epochs"]) * math.ceil(n_train / int(config["batch_size"]))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    return optimizer, scheduler


def main(argv: list[str] | None = None) -> int:
    """Train, report progress per epoch, print the test accuracy and save the state_dict."""
    started = time.perf_counter()
    config = load_config(parse_args(argv))
    set_threads(int(config.get("num_threads", 1)))
    set_seed(int(config["seed"]))
    device = select_device()
    x_train, y_train, x_test, y_test = load_data(int(config["test_size"]))
    x_train, y_train = x_train.to(device), y_train.to(device)
    print(f"device={device} train={len(x_train)} test={len(x_test)}", flush=True)

    model = build_model(config).to(device)
    optimizer, scheduler = make_optimizer(model, config, len(x_train))
    epochs = int(config["epochs"])
    for epoch in range(1, epochs + 1):
        loss = train_epoch(model, optimizer, x_train, y_train, scheduler, config)
        acc = evaluate(model, x_train, y_train)
        pct = round(100 * epoch / epochs)
        print(f"[PROGRESS:{pct}:Epoch {epoch}/{epochs} loss={loss:.4f} acc={acc:.4f}]", flush=True)

    print(f"Test accuracy: {evaluate(model, x_test, y_test):.4f}", flush=True)
    model_path = Path.cwd() / str(config.get("model_file", "model.pt"))
    torch.save(model.state_dict(), model_path)
    print(f"Saved model state_dict to {model_path}", flush=True)
    print(f"Done in {time.perf_counter() - started:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

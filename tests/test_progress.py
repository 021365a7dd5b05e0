"""The progress parser: [PROGRESS:pct:msg] lines and tqdm bars."""

from __future__ import annotations

import pytest

from vrungpu_gateway.engine.progress import Progress, parse_progress


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("[PROGRESS:60:Epoch 6/10 완료, Loss: 0.1]", Progress(60, "Epoch 6/10 완료, Loss: 0.1")),
        ("[PROGRESS:12.5:half]", Progress(12.5, "half")),
        ("[PROGRESS:50]", Progress(50.0, None)),
        ("log prefix [PROGRESS: 70 : spaced ] suffix", Progress(70.0, "spaced")),
        ("[PROGRESS:150:too much]", Progress(100.0, "too much")),
        ("[PROGRESS:-3:negative]", Progress(0.0, "negative")),
        ("train:  45%|████▌     | 45/100 [00:01<00:01, 40.0it/s]", Progress(45.0, "train")),
        (" 100%|██████████| 10/10", Progress(100.0, None)),
    ],
)
def test_parses(line: str, expected: Progress) -> None:
    assert parse_progress(line) == expected


@pytest.mark.parametrize("line", ["[PROGRESS:nan:x]", "[PROGRESS:abc:x]", "plain text", "50%"])
def test_ignores(line: str) -> None:
    assert parse_progress(line) is None

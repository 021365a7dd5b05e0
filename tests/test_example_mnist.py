"""End-to-end check of examples/mnist_project: real training subprocess, then handler inference."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from sklearn.datasets import load_digits  # noqa: E402  (only once sklearn is known present)

PROJECT = Path(__file__).resolve().parents[1] / "examples" / "mnist_project"
PROGRESS_RE = re.compile(r"^\[PROGRESS:(\d+):Epoch (\d+)/(\d+) loss=[\d.]+ acc=[\d.]+\]$")
ACCURACY_RE = re.compile(r"^Test accuracy: (\d\.\d+)$", re.MULTILINE)
EPOCHS = int(json.loads((PROJECT / "config.json").read_text(encoding="utf-8"))["epochs"])


def _import_handler(folder: Path) -> ModuleType:
    """Import handler.py of ``folder`` from its file path, as the model registry does."""
    spec = importlib.util.spec_from_file_location("mnist_example_handler", folder / "handler.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train(workdir: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python train.py`` in ``workdir`` on the CPU, as the gateway would."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "train.py"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@pytest.fixture(scope="module")
def trained_project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A copy of the example project after one real training run: (folder, stdout)."""
    workdir = tmp_path_factory.mktemp("mnist") / "mnist_project"
    shutil.copytree(PROJECT, workdir, ignore=shutil.ignore_patterns("__pycache__", "model.pt"))
    result = _train(workdir)
    assert result.returncode == 0, f"train.py failed:\n{result.stdout}\n{result.stderr}"
    return workdir, result.stdout


@pytest.mark.slow
def test_train_reports_progress_and_accuracy(trained_project: tuple[Path, str]) -> None:
    workdir, stdout = trained_project
    progress = [m for line in stdout.splitlines() if (m := PROGRESS_RE.match(line.strip()))]
    assert [int(m.group(2)) for m in progress] == list(range(1, EPOCHS + 1))
    assert all(int(m.group(3)) == EPOCHS for m in progress)
    percents = [int(m.group(1)) for m in progress]
    assert percents == sorted(percents) and all(0 <= p <= 100 for p in percents)
    assert percents[-1] == 100
    accuracy = ACCURACY_RE.search(stdout)
    assert accuracy is not None, stdout
    assert float(accuracy.group(1)) >= 0.90
    assert (workdir / "model.pt").is_file()


@pytest.mark.slow
def test_handler_predicts_held_out_digits(trained_project: tuple[Path, str]) -> None:
    workdir, _ = trained_project
    handler = _import_handler(workdir)
    model = handler.load(str(workdir))
    digits = load_digits()
    images = [image.tolist() for image in digits.images[-50:]]
    result = handler.predict(model, {"images": images})
    predictions = result["predictions"]
    assert len(predictions) == 50 and all(type(p) is int for p in predictions)
    correct = sum(p == int(t) for p, t in zip(predictions, digits.target[-50:], strict=True))
    assert correct / 50 >= 0.90


@pytest.mark.slow
@pytest.mark.parametrize(
    "bad_input",
    [
        {},
        {"images": []},
        {"images": "not a list"},
        {"images": [[[0] * 8] * 7]},
        {"images": [[[0] * 8] * 8, [[0] * 7] * 8]},
        {"images": [[["a"] * 8] * 8]},
        [[[0] * 8] * 8],
    ],
)
def test_handler_rejects_bad_input(trained_project: tuple[Path, str], bad_input: object) -> None:
    workdir, _ = trained_project
    handler = _import_handler(workdir)
    model = handler.load(str(workdir))
    with pytest.raises(ValueError, match="images") as caught:
        handler.predict(model, bad_input)
    assert "\n" not in str(caught.value)

"""The seed's walkthrough: zip examples/mnist_project, POST /run/project, poll progress."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest

from tests.support import REPO, Api, wait_for

pytest.importorskip("torch")
pytest.importorskip("sklearn")


def zip_like_seed(folder: Path, dest: Path) -> Path:
    """`cd examples && zip -r mnist_project.zip mnist_project/` (the top folder is kept)."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, Path(folder.name) / path.relative_to(folder))
    return dest


@pytest.mark.slow
def test_mnist_project_trains_through_the_gateway(api: Api, tmp_path: Path) -> None:
    archive = zip_like_seed(REPO / "examples" / "mnist_project", tmp_path / "mnist_project.zip")
    with open(archive, "rb") as fh:
        res = api.post(
            "/run/project",
            files={"file": ("mnist_project.zip", fh)},
            data={"entry_point": "train.py", "timeout": "300"},
        )
    assert res.status_code == 202, res.text
    task_id = res.json()["task_id"]
    seen: set[float] = set()

    def finished() -> dict | None:
        task = api.task(task_id)
        seen.add(task["progress"])
        return task if task["status"] in ("completed", "failed") else None

    task = wait_for(finished, 240, interval_s=0.2, what="mnist training")
    assert task["status"] == "completed", task["stderr"][-2000:]
    assert task["progress"] == 100 and "Epoch" in (task["progress_message"] or "")
    assert len(seen - {0.0, 100.0}) >= 1, f"no progress seen in between: {sorted(seen)}"
    accuracy = float(re.search(r"Test accuracy: ([0-9.]+)", task["stdout"]).group(1))
    assert accuracy >= 0.90
    files = {f["path"] for f in api.get(f"/task/{task_id}/files").json()["files"]}
    assert "model.pt" in files

"""The data directory layout: database, workspaces, logs, models, uploads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataLayout:
    root: Path

    @property
    def database(self) -> Path:
        return self.root / "vrungpu.db"

    @property
    def workspaces(self) -> Path:
        return self.root / "workspaces"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    @property
    def run(self) -> Path:
        """Each running job's spec, state and exit files (see ``engine/shim.py``)."""
        return self.root / "run"

    def workspace(self, task_id: str) -> Path:
        return self.workspaces / task_id

    def ensure(self) -> None:
        for path in (self.root, self.workspaces, self.logs, self.models, self.uploads, self.run):
            path.mkdir(parents=True, exist_ok=True)

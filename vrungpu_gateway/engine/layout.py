"""The data directory layout: database, workspaces, logs, models, uploads."""

from __future__ import annotations

import fcntl
import os
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

    def lock(self) -> int:
        """Take the data dir for this gateway (an flock held while the process lives, so a
        crash releases it); ValueError, one line, when another gateway has it."""
        path = self.root / "gateway.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ValueError(
                f"the data dir {self.root} is in use by another gateway (pid {holder}); "
                "two gateways on one data dir would run jobs on the same GPUs"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def ensure(self) -> None:
        for path in (self.root, self.workspaces, self.logs, self.models, self.uploads, self.run):
            path.mkdir(parents=True, exist_ok=True)

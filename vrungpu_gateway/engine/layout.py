"""The data directory layout: database, workspaces, logs, models, uploads, and their modes.

Everything under the data dir is the gateway's alone: folders 0700, the database (and its
WAL and shared-memory files), the token and the runtime files 0600. With a job user
(``engine/jobuser.py``) the data dir, ``workspaces/``, ``run/`` and ``models/`` are 0711: the
job user may pass through to its own workspace (a kernel to its connection file, a model
worker to its model) but list none.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from dataclasses import dataclass
from pathlib import Path

# The database before its first connection: SQLite creates -wal and -shm with its mode.
SECRET_FILES = ("vrungpu.db", "vrungpu.db-wal", "vrungpu.db-shm", "token", "gateway.json")


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
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.secure(passable=False)

    def secure(self, *, passable: bool) -> None:
        """Set the modes (a data dir made by an older gateway had 0755 and 0644).
        ``passable``: a job user must pass through to its workspace."""
        through = 0o711 if passable else 0o700
        for path in (self.root, self.workspaces, self.run, self.models):
            _chmod_if_needed(path, through)
        for path in (self.logs, self.uploads):
            _chmod_if_needed(path, 0o700)
        for name in SECRET_FILES:
            with contextlib.suppress(FileNotFoundError):
                _chmod_if_needed(self.root / name, 0o600)


def _chmod_if_needed(path: Path, mode: int) -> None:
    """Set a mode only when it differs: a read-only data dir or database whose modes are
    right already is then refused by the store with one line, not by a failed chmod."""
    if stat.S_IMODE(os.stat(path).st_mode) != mode:
        os.chmod(path, mode)

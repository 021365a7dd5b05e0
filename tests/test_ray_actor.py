"""The node side of the Ray backend in process (no Ray needed): the workspace zip, reads at
byte offsets up to the log limit, and kill/close of a job's whole process group."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import pid_alive, wait_for
from vrungpu_gateway.engine.ray_actor import JobActor, unzip_into, zip_dir


@pytest.fixture
def actor() -> Iterator[JobActor]:
    job = JobActor("t")
    yield job
    job.close()


def test_the_workspace_zip_round_trips_files_and_skips_symlinks(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "main.py").write_text("print(1)\n")
    (src / "a" / "b" / "w.bin").write_bytes(bytes(range(256)) * 10)
    (src / "secret").symlink_to("/etc/hostname")
    dest = tmp_path / "dest"
    unzip_into(zip_dir(src), dest)
    found = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert found == ["a/b/w.bin", "main.py"]
    assert (dest / "a" / "b" / "w.bin").read_bytes() == bytes(range(256)) * 10


def test_reads_stop_at_the_limit_with_the_notice_once(actor: JobActor) -> None:
    actor.limit_bytes, actor.notice = 10, b"[cut]\n"
    (actor.dir / "stdout.log").write_bytes(b"0123456789abcdef")
    (actor.dir / "stderr.log").write_bytes(b"0123456789")  # exactly the limit: no notice
    chunks, code = actor.poll({"stdout": 0, "stderr": 0}, 4)
    assert chunks == {"stdout": b"0123", "stderr": b"0123"} and code is None
    chunks, _ = actor.poll({"stdout": 8, "stderr": 8}, 4)
    assert chunks == {"stdout": b"89[cut]\n", "stderr": b"89"}
    chunks, _ = actor.poll({"stdout": 10 + len(b"[cut]\n"), "stderr": 10}, 4)
    assert chunks == {"stdout": b"", "stderr": b""}


def test_kill_ends_the_jobs_whole_group(actor: JobActor) -> None:
    child = "import subprocess, sys, time\n" + (
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print(p.pid, flush=True)\ntime.sleep(600)\n"
    )
    actor.proc = subprocess.Popen(
        [sys.executable, "-c", child], stdout=subprocess.PIPE, start_new_session=True
    )
    assert actor.proc.stdout is not None
    grandchild = int(actor.proc.stdout.readline())
    pids = [actor.proc.pid, grandchild]
    code = actor.kill(0.5)
    assert code is not None and code < 0
    wait_for(lambda: not any(pid_alive(pid) for pid in pids), 10, what="the group to end")
    actor.proc.stdout.close()


def test_close_removes_the_nodes_copy(actor: JobActor) -> None:
    (actor.workspace).mkdir()
    (actor.workspace / "out.txt").write_text("x")
    assert os.path.isdir(actor.dir)
    actor.close()
    assert not actor.dir.exists()

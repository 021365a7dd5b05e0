"""The node side of the Ray backend in process (no Ray needed): the workspace zip, reads at
byte offsets up to the log limit, and kill/close of a job's whole process group."""

from __future__ import annotations

import io
import os
import pwd
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import pid_alive, wait_for
from tests.test_secrets import SYSTEM_PYTHON
from vrungpu_gateway.engine.jobuser import TASK_IDS, JobUser
from vrungpu_gateway.engine.paths import read_own_file
from vrungpu_gateway.engine.ray_actor import (
    NOT_FETCHED,
    JobActor,
    popen_user,
    unzip_into,
    zip_dir,
)


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


def test_what_a_job_left_running_outside_its_group_ends_with_it(actor: JobActor) -> None:
    """A setsid child carries the job's VRUNGPU_TASK_ID: the end of the job ends it too."""
    code = (
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'],"
        " start_new_session=True)\nprint(p.pid, flush=True)\n"
    )
    actor.proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        env={**os.environ, "VRUNGPU_TASK_ID": actor.task_id},
        start_new_session=True,
    )
    assert actor.proc.stdout is not None
    escaped = int(actor.proc.stdout.readline())
    assert actor.proc.wait(timeout=30) == 0 and pid_alive(escaped)
    actor.workspace.mkdir()
    actor.workspace_zip()  # the job ended: its files go back once nothing of it runs
    wait_for(lambda: not pid_alive(escaped), 10, what="the escaped child to end")
    actor.proc.stdout.close()


@pytest.mark.skipif(os.getuid() != 0, reason="files of another owner need root")
def test_only_the_owners_regular_files_are_read_never_through_a_link(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    root_file = tmp_path / "secret"
    root_file.write_text("root only")
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    (ws / "mine.txt").write_text("the job's")
    (ws / "link").symlink_to(root_file)
    (ws / "sub" / "rooted.txt").write_text("a root file in the job's folder")
    os.mkfifo(ws / "fifo")
    for path in (ws, ws / "sub", ws / "mine.txt", ws / "fifo"):
        os.lchown(path, nobody.pw_uid, nobody.pw_gid)
    assert read_own_file(ws / "mine.txt", nobody.pw_uid) == b"the job's"
    assert read_own_file(ws / "link", nobody.pw_uid) is None  # never followed
    assert read_own_file(ws / "link", None) is None
    assert read_own_file(ws / "fifo", nobody.pw_uid) is None  # and never blocks
    assert read_own_file(ws / "sub" / "rooted.txt", nobody.pw_uid) is None
    assert read_own_file(ws / "mine.txt", nobody.pw_uid, limit=3) is None  # over the limit
    with zipfile.ZipFile(io.BytesIO(zip_dir(ws, owner=nobody.pw_uid))) as archive:
        assert archive.namelist() == ["mine.txt"]


def test_files_past_the_fetch_limit_are_named_not_sent(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a" * 10)
    (tmp_path / "b").write_bytes(b"b" * 10)
    (tmp_path / "sub").mkdir()
    with zipfile.ZipFile(io.BytesIO(zip_dir(tmp_path, limit=15))) as archive:
        assert sorted(archive.namelist()) == ["a", NOT_FETCHED]
        assert archive.read(NOT_FETCHED).decode().splitlines()[1:] == ["b"]


@pytest.mark.skipif(os.getuid() != 0, reason="a task's own uid needs root")
@pytest.mark.skipif(not os.access(SYSTEM_PYTHON, os.X_OK), reason=f"no {SYSTEM_PYTHON}")
def test_what_runs_as_the_tasks_uid_ends_with_it_marker_or_not(actor: JobActor) -> None:
    """A daemon that left the group and cleared its environment is still the task's uid."""
    actor.user = JobUser("nobody", TASK_IDS.start + 4242, TASK_IDS.start + 4242, "")
    daemon = (
        "import os, sys, time\n"
        "if os.fork():\n    os._exit(0)\nos.setsid()\n"
        "print(os.getpid(), flush=True)\ntime.sleep(600)\n"
    )
    actor.proc = subprocess.Popen(
        ["/usr/bin/env", "-i", SYSTEM_PYTHON, "-c", daemon],  # one the task's uid may run
        stdout=subprocess.PIPE,
        start_new_session=True,
        **popen_user(actor.user),
    )
    assert actor.proc.stdout is not None
    escaped = int(actor.proc.stdout.readline())
    assert pid_alive(escaped)
    actor.kill(0.5)  # the leader is gone already: only the uid finds the daemon
    wait_for(lambda: not pid_alive(escaped), 10, what="the daemon to end")
    actor.proc.stdout.close()

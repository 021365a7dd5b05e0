"""The store's failures: a garbage or read-only database stops the start with one line
(exit 2); a storage error while serving answers 503 without SQL and holds no GPU."""

from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import GatewayProcess, wait_for
from tests.test_migrations import gateway_cmd, refusal
from vrungpu_gateway.store.db import Database

SQL_WORDS = ("INSERT", "UPDATE", "SELECT", "[SQL", "sqlalchemy", "Traceback")


def test_a_garbage_database_stops_the_start_with_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "vrungpu.db").write_bytes(b"this is not SQLite\n" * 400)
    line = refusal(data)
    assert (
        line == f"vrungpu-gateway: the database {data.resolve()}/vrungpu.db cannot be used: "
        "file is not a database"
    )


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """``chattr +i``: read-only even for root (who ignores file modes)."""
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i does not work here ({done.stderr.strip()}): no read-only file")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_read_only_database_stops_the_start_with_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    path = data / "vrungpu.db"
    db = Database(Database.sqlite_url(path))
    db.upgrade()
    db.close()
    path.chmod(0o600)
    with immutable(path):
        line = refusal(data)
    assert line.endswith("cannot be used: attempt to write a readonly database"), line


def test_a_read_only_data_dir_stops_the_start_with_one_line(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    start_gateway(data_dir=data).stop()  # a data dir as a gateway leaves it
    for name in ("vrungpu.db-wal", "vrungpu.db-shm"):  # SQLite could write through these
        (data / name).unlink(missing_ok=True)
    with immutable(data):
        line = refusal(data)
    assert line.endswith("cannot be used: unable to open database file"), line


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs (root only): a disk that can be filled up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): no disk to fill")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(disk: Path) -> Path:
    """Take every free byte of ``disk``."""
    filler = disk / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_a_full_disk_answers_503_without_sql_and_keeps_no_gpu(
    start_gateway: Callable[..., GatewayProcess], small_disk: Path
) -> None:
    gw = start_gateway(gpus="sim:1", extra=["--db-url", f"sqlite:///{small_disk}/vrungpu.db"])
    api = gw.api
    assert api.post("/run/sync", json={"code": "print(1)"}).json()["status"] == "completed"
    filler = fill(small_disk)
    big_env = {"PAD": "x" * 200_000}  # new pages: the write needs room that is not there
    refused = None
    for _ in range(40):
        res = api.post("/run/async", json={"code": "print(2)", "gpus": 1, "env": big_env})
        if res.status_code == 503:
            refused = res
            break
        assert res.status_code == 202, res.text
    assert refused is not None, "no write failed on a full disk"
    body = refused.json()
    assert body["code"] == "storage_unavailable" and "disk is full" in body["detail"]
    assert "\n" not in body["detail"] and not any(w in body["detail"] for w in SQL_WORDS)
    filler.unlink()
    wait_for(lambda: api.get("/gpu/pool").json()["available_gpus"] == [0], 30, what="GPU free")
    again = api.post("/run/sync", json={"code": "print(3)", "gpus": 1}).json()
    assert again["status"] == "completed" and again["gpu_ids"] == [0]
    assert api.get(f"/task/{again['task_id']}").json()["status"] == "completed"


def test_one_gateway_per_sqlite_database_too(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """Two data dirs, one --db-url file: the second gateway is refused, naming the first."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    one_gateway_per_database(start_gateway, tmp_path, url, shown=str(tmp_path / "shared.db"))


def one_gateway_per_database(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path, url: str, *, shown: str
) -> None:
    """While a gateway holds ``url`` (named ``shown``), a second gateway (another data dir)
    and `db upgrade` are refused, naming it; both work once it has stopped."""
    first = start_gateway(extra=["--db-url", url])
    assert first.proc is not None
    line = refusal(tmp_path / "other", "--db-url", url)
    assert f"the database {shown} is in use by another gateway" in line
    assert f"pid {first.proc.pid}," in line
    held = gateway_cmd("db", "upgrade", "--db-url", url)
    assert held.returncode == 2 and "is in use by another gateway" in held.stderr
    first.stop()
    assert "the newest" in gateway_cmd("db", "upgrade", "--db-url", url).stdout
    second = start_gateway(data_dir=tmp_path / "other", extra=["--db-url", url])
    assert second.api.get("/tasks").status_code == 200


def test_a_bad_db_url_stops_the_start_with_one_line(tmp_path: Path) -> None:
    assert refusal(tmp_path / "a", "--db-url", "nonsense").startswith(
        "vrungpu-gateway: --db-url: Could not parse"
    )
    assert "No module named" in refusal(tmp_path / "b", "--db-url", "mysql://db.example/x")
    nobody_there = refusal(
        tmp_path / "c", "--db-url", "postgresql+psycopg://u:secret@127.0.0.1:1/x"
    )
    assert "cannot be used: connection failed" in nobody_there
    assert "secret" not in nobody_there and "u:***@127.0.0.1:1/x" in nobody_there

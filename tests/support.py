"""Test support: real gateways in subprocesses on free loopback ports, and waiting helpers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import requests

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
TOKEN = "test-token-0123456789abcdef"


def wait_for(
    predicate: Callable[[], T],
    timeout_s: float = 10.0,
    interval_s: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")


class Api:
    """requests against one gateway, with its token and a default timeout."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"token {token}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        return self.session.request(method, self.url + path, **kwargs)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> requests.Response:
        return self.request("PUT", path, **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return self.request("DELETE", path, **kw)

    def task(self, task_id: str) -> dict[str, Any]:
        res = self.get(f"/task/{task_id}")
        assert res.status_code == 200, res.text
        return res.json()

    def submit(self, code: str, **fields: Any) -> str:
        res = self.post("/run/async", json={"code": code, **fields})
        assert res.status_code == 202, res.text
        return res.json()["task_id"]

    def wait_status(self, task_id: str, *statuses: str, timeout_s: float = 30) -> dict[str, Any]:
        return wait_for(
            lambda: (t := self.task(task_id))["status"] in statuses and t,
            timeout_s,
            what=f"task {task_id} in {statuses}",
        )


class GatewayProcess:
    """A real `python -m vrungpu_gateway` on a free port with its own data dir."""

    def __init__(
        self,
        data_dir: Path,
        *,
        gpus: str = "sim:2",
        token: str | None = TOKEN,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.gpus = gpus
        self.token = token
        self.extra = extra or []
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> GatewayProcess:
        runtime = self.data_dir / "gateway.json"
        runtime.unlink(missing_ok=True)
        # token: a string is passed, None means --no-auth, "" lets the gateway generate one
        auth = ["--token", self.token] if self.token else [] if self.token == "" else ["--no-auth"]
        cmd = [
            sys.executable,
            "-m",
            "vrungpu_gateway",
            "--port",
            "0",
            "--data-dir",
            str(self.data_dir),
            "--gpus",
            self.gpus,
            "--kill-grace",
            "2",
            *auth,
            *self.extra,
        ]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "gateway.log", "ab")  # noqa: SIM115
        env = {**os.environ, **self.env}
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        log.close()
        info = wait_for(lambda: self._runtime(runtime), 20, what="gateway start")
        self.url = info["url"]
        if self.token == "":
            self.token = (self.data_dir / "token").read_text().strip()
        return self

    def _runtime(self, path: Path) -> dict[str, Any] | None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def log(self) -> str:
        return (self.data_dir / "gateway.log").read_text(errors="replace")

    @property
    def api(self) -> Api:
        return Api(self.url, self.token)

    def stop(self, sig: int = signal.SIGTERM, *, end_jobs: bool = True) -> int | None:
        """Stop the gateway; with ``end_jobs``, also the jobs it leaves running (the default
        ``--on-stop leave`` keeps them for the next start), so no test leaves processes."""
        code = self._stop_gateway(sig)
        if end_jobs:
            end_detached_jobs(self.data_dir)
        return code

    def _stop_gateway(self, sig: int) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def restart(self) -> GatewayProcess:
        self.stop(end_jobs=False)
        return self.start()


def shim_pids(data_dir: Path) -> dict[str, int]:
    """task id -> pid of each job shim still alive under ``data_dir`` (from its state file)."""
    found = {}
    for state in (data_dir / "run").glob("*.state.json"):
        try:
            pid = json.loads(state.read_text())["shim_pid"]
        except (OSError, ValueError, KeyError):
            continue
        if pid and pid_alive(pid):
            found[state.name.split(".")[0]] = pid
    return found


def end_detached_jobs(data_dir: Path) -> None:
    """Cancel every job a stopped gateway left running (SIGTERM to its shim), and wait."""
    pids = shim_pids(data_dir)
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not any(pid_alive(p) for p in pids.values()), 30, what="left jobs to end")


class Gate:
    """A file the test creates to let its jobs go on: jobs wait on an event the test controls,
    never on a sleep that a loaded machine may outlast."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def code(self) -> str:
        """Python lines (a job's code) that block until the gate is opened."""
        return (
            f"import os as _os, time as _time\nwhile not _os.path.exists({str(self.path)!r}):\n"
            "    _time.sleep(0.02)\n"
        )

    def open(self) -> None:
        self.path.touch()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

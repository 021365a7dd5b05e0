"""Secrets at rest: file modes under the data dir, --token-file, tokens kept out of the log,
the process list and gateway.json, and jobs as an unprivileged job user (as root only)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import pwd
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import tornado.httpclient
import tornado.httpserver
import tornado.web

from tests.support import REPO, TOKEN, Gate, GatewayProcess, wait_for
from tests.test_pyenvs import source_project
from vrungpu_gateway import logmask
from vrungpu_gateway.engine import containment
from vrungpu_gateway.engine.jobuser import TASK_IDS, JobUser
from vrungpu_gateway.engine.shim import ShimSpec

SYSTEM_PYTHON = "/usr/bin/python3.11"  # world-executable on Debian (see the second-wave facts)
FILE_TOKEN = "file-token-" + "9" * 40


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- modes ------------------------------------------------------------------------------------
def test_the_data_dir_is_the_gateways_alone(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)  # as an older gateway (or the operator) left it
    (data / "vrungpu.db").touch(mode=0o644)
    gw = start_gateway(data, token="")
    task_id = gw.api.submit("open('out.txt', 'w').write('x')\nprint('done')")
    gw.api.wait_status(task_id, "completed")
    assert mode(data) == 0o700
    for name in ("vrungpu.db", "vrungpu.db-wal", "vrungpu.db-shm", "token", "gateway.json"):
        assert mode(data / name) == 0o600, name
    for name in ("logs", "workspaces", "run", "models", "uploads"):
        assert mode(data / name) == 0o700, name
    assert mode(data / "workspaces" / task_id) == 0o700
    logs = sorted((data / "logs").glob(f"{task_id}.*"))
    assert logs and all(mode(p) == 0o600 for p in logs), [(p, oct(mode(p))) for p in logs]
    assert mode(data / "workspaces" / task_id / "out.txt") & 0o077 == 0  # the job's umask


# -- the token: file, command line, gateway.json, log -----------------------------------------
@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token.txt"
    path.write_text(f"  {FILE_TOKEN}\n")
    path.chmod(0o600)
    return path


def test_token_file_is_the_token_and_stays_off_the_command_line(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path, token_file: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "token").write_text("decoy-of-the-data-dir\n")  # the file wins over it
    gw = start_gateway(data, token="", extra=["--token-file", str(token_file)])
    assert (
        requests.get(
            gw.url + "/", headers={"Authorization": "token decoy-of-the-data-dir"}, timeout=10
        ).status_code
        == 401
    )
    gw.token = FILE_TOKEN
    assert gw.api.get("/").status_code == 200
    assert gw.proc is not None
    cmdline = Path(f"/proc/{gw.proc.pid}/cmdline").read_bytes()
    assert b"--token-file" in cmdline and FILE_TOKEN.encode() not in cmdline
    assert FILE_TOKEN not in (data / "gateway.json").read_text()
    # requests that put the token in the URL, fine and failing
    for path in ("/gpu", "/task/no-such-task", "/task/no-such-task/logs", "/nowhere"):
        requests.get(f"{gw.url}{path}?token={FILE_TOKEN}", timeout=10)
    requests.post(f"{gw.url}/run/async?token={FILE_TOKEN}", data=b"{not json", timeout=10)
    wait_for(lambda: "/run/async?token=***" in gw.log(), 10, what="the access log line")
    assert FILE_TOKEN not in gw.log()


@pytest.mark.parametrize(
    ("content", "file_mode", "expected"),
    [
        (FILE_TOKEN, 0o644, "readable by its group or others (mode 644); chmod 600"),
        (FILE_TOKEN, 0o640, "readable by its group or others (mode 640)"),
        ("  \n", 0o600, "is empty"),
        (None, 0o600, "No such file or directory"),
    ],
    ids=["world-readable", "group-readable", "empty", "missing"],
)
def test_a_token_file_that_is_no_secret_is_refused(
    tmp_path: Path, content: str | None, file_mode: int, expected: str
) -> None:
    path = tmp_path / "token.txt"
    if content is not None:
        path.write_text(content)
        path.chmod(file_mode)
    done = _run_gateway(tmp_path, "--token-file", str(path))
    assert done.returncode == 2
    assert done.stderr.startswith(f"vrungpu-gateway: --token-file {path}"), done.stderr
    assert expected in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_token_and_token_file_together_are_refused(tmp_path: Path, token_file: Path) -> None:
    done = _run_gateway(tmp_path, "--token", TOKEN, "--token-file", str(token_file))
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "vrungpu-gateway: give the token once: --token (VRUNGPU_TOKEN) or --token-file"
    )


def _run_gateway(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "vrungpu_gateway", "--port", "0", "--gpus", "none"]
    cmd += ["--data-dir", str(tmp_path / "data"), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRUNGPU_")}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def test_a_generated_token_is_shown_once_in_the_banner(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    gw = start_gateway(token="")
    assert f"{gw.url}/?token={gw.token}" in gw.log()  # the operator needs it to log in


# -- the mask itself: every record, its arguments, its traceback ------------------------------
@pytest.fixture
def masked_log() -> Iterator[io.StringIO]:
    """The root logger writing into a buffer through a handler with the mask installed."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    logmask.install()
    logmask.register_secret(FILE_TOKEN)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        logmask.forget_secrets()


def test_the_mask_covers_arguments_tracebacks_and_query_values(masked_log: io.StringIO) -> None:
    log = logging.getLogger("vrungpu_gateway.test")
    log.info("header %s", f"Authorization: token {FILE_TOKEN}")
    log.warning("%d GET %s", 404, "/x?a=1&token=another-secret-value&b=2")
    try:
        raise RuntimeError(f"bad token {FILE_TOKEN}")
    except RuntimeError:
        log.exception("failed for %r", {"token": FILE_TOKEN})
    text = masked_log.getvalue()
    assert FILE_TOKEN not in text and "another-secret-value" not in text
    assert "Authorization: token ***" in text and "/x?a=1&token=***&b=2" in text
    assert "RuntimeError: bad token ***" in text


def test_a_500_with_the_token_in_its_url_logs_no_token(masked_log: io.StringIO) -> None:
    """Tornado's own report of an uncaught exception (the request's repr, its URI, the
    traceback) goes through the mask."""

    class Broken(tornado.web.RequestHandler):
        def get(self) -> None:
            raise RuntimeError(f"broken while holding {self.get_argument('token')}")

    async def main() -> int:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        server = tornado.httpserver.HTTPServer(tornado.web.Application([("/broken", Broken)]))
        server.add_socket(sock)
        client = tornado.httpclient.AsyncHTTPClient()
        port = sock.getsockname()[1]
        res = await client.fetch(
            f"http://127.0.0.1:{port}/broken?token={FILE_TOKEN}", raise_error=False
        )
        server.stop()
        client.close()
        return res.code

    assert asyncio.run(main()) == 500
    text = masked_log.getvalue()
    assert "Uncaught exception" in text and "RuntimeError: broken while holding ***" in text
    assert FILE_TOKEN not in text


# -- jobs as the job user (root only) ---------------------------------------------------------
needs_root = pytest.mark.skipif(os.getuid() != 0, reason="a job user needs a gateway as root")
needs_system_python = pytest.mark.skipif(
    not os.access(SYSTEM_PYTHON, os.X_OK), reason=f"{SYSTEM_PYTHON} is not installed"
)


def _others_can_read(path: Path) -> bool:
    """Whether a user other than the owner may read ``path``: every folder above it passable."""
    folders = path.resolve().parents
    return bool(path.stat().st_mode & stat.S_IROTH) and all(
        f.stat().st_mode & stat.S_IXOTH for f in folders
    )


# A gateway with a job user refuses to start when that user cannot read our package (kernels
# and model workers start from it): a checkout under a 0700 folder (`mktemp -d`) cannot run these.
needs_readable_checkout = pytest.mark.skipif(
    not _others_can_read(REPO / "vrungpu_gateway" / "engine" / "jobuser.py"),
    reason="the checkout is not readable by other users (a folder above it is closed)",
)


PRYING_JOB = """
import json, os, sys
data = os.environ["VRUNGPU_WORKSPACE"].rsplit("/workspaces/", 1)[0]
seen = {"uid": os.getuid(), "home": os.environ["HOME"], "user": os.environ["USER"]}
for name in sys.argv[1:]:
    try:
        with open(os.path.join(data, name), "rb") as fh:
            fh.read(1)
        seen[name] = "read"
    except OSError as exc:
        seen[name] = type(exc).__name__
try:
    os.listdir(os.path.join(data, "workspaces"))
    seen["list"] = "read"
except OSError as exc:
    seen["list"] = type(exc).__name__
for name in ("cwd", "environ"):  # the first task runs still: its process, through /proc
    try:
        os.readlink(f"/proc/{os.environ['OTHER_PID']}/cwd") if name == "cwd" else open(
            f"/proc/{os.environ['OTHER_PID']}/environ"
        ).read()
        seen["proc " + name] = "read"
    except OSError as exc:
        seen["proc " + name] = type(exc).__name__
try:
    os.kill(int(os.environ["OTHER_PID"]), 0)
    seen["signal"] = "sent"
except OSError as exc:
    seen["signal"] = type(exc).__name__
with open("mine.txt", "w") as fh:
    fh.write("written by the job")
print(json.dumps(seen))
"""


@needs_root
@needs_system_python
@needs_readable_checkout
def test_a_job_cannot_read_secrets_or_other_tasks_but_its_own_workspace_works(
    start_gateway: Callable[..., GatewayProcess], open_base: Path
) -> None:
    gw = start_gateway(
        open_base / "data", token="", extra=["--python", SYSTEM_PYTHON, "--job-user", "nobody"]
    )
    assert "jobs and kernels run with nobody's rights, each as a uid of its own" in gw.log()
    gate = Gate(open_base / "go")  # the job's own uid can see it: open_base is 0711
    first = gw.api.submit(
        "import os\nopen('private.txt', 'w').write('first task')\n"
        "print(os.getpid(), flush=True)\n" + gate.code
    )
    other_pid = wait_for(lambda: gw.api.task(first)["stdout"].strip(), 30, what="first's pid")
    names = [
        "token",
        "vrungpu.db",
        "vrungpu.db-wal",
        "logs/" + first + ".stdout.log",
        f"workspaces/{first}/private.txt",
        f"workspaces/{first}/main.py",
    ]
    second = gw.api.submit(PRYING_JOB, args=names, env={"OTHER_PID": other_pid})
    task = gw.api.wait_status(second, "completed", "failed")
    gate.open()
    assert task["status"] == "completed", task
    assert gw.api.wait_status(first, "completed", "failed")["status"] == "completed"
    seen = json.loads(task["stdout"].strip().splitlines()[-1])
    proc = {"proc cwd": "PermissionError", "proc environ": "PermissionError"}
    assert {key: seen[key] for key in proc} == proc and seen["signal"] == "PermissionError"
    nobody = JobUser.named("nobody")
    assert seen["uid"] == nobody.for_task(second).uid != nobody.for_task(first).uid
    assert seen["uid"] in TASK_IDS and seen["user"] == "nobody"
    assert seen["home"] == str((open_base / "data" / "workspaces" / second).resolve())
    assert {name: seen[name] for name in names} == dict.fromkeys(names, "PermissionError")
    assert seen["list"] == "PermissionError"
    res = gw.api.get(f"/task/{second}/files/mine.txt")
    assert res.status_code == 200 and res.text == "written by the job"
    ws = gw.data_dir / "workspaces" / second
    assert (ws.stat().st_uid, mode(ws)) == (0, 0o700)  # closed again once the job ended
    data = gw.data_dir
    assert [mode(data), mode(data / "workspaces"), mode(data / "logs")] == [0o711, 0o711, 0o700]


@needs_root
def test_an_explicit_job_user_that_cannot_run_python_is_refused(
    tmp_path: Path, open_base: Path
) -> None:
    """The gateway's own interpreter lives under /root (0700): nobody cannot run it."""
    if not os.path.realpath(sys.executable).startswith("/root/"):
        pytest.skip("this interpreter may well be runnable by nobody")
    done = _run_gateway(open_base, "--no-auth", "--job-user", "nobody")
    assert done.returncode == 2
    assert done.stderr.startswith("vrungpu-gateway: --job-user nobody: nobody cannot run")
    assert len(done.stderr.strip().splitlines()) == 1


@needs_root
def test_auto_falls_back_to_root_loudly(start_gateway: Callable[..., GatewayProcess]) -> None:
    gw = start_gateway()  # the tests' interpreter under /root, the data dir under pytest's tmp
    assert "WARNING vrungpu_gateway.engine.jobuser: JOBS RUN AS ROOT" in gw.log()
    task_id = gw.api.submit("import os; print(os.getuid())")
    assert gw.api.wait_status(task_id, "completed")["stdout"].strip() == "0"


@needs_root
def test_a_warm_job_drops_to_the_job_user_too(open_base: Path) -> None:
    """The zygote's path: the shim (root) forks the job with ``launch_fork`` in an
    interpreter that imported everything already; the child alone becomes the job user."""
    nobody = pwd.getpwnam("nobody")
    data = open_base / "data"
    ws = data / "workspaces" / "warm"
    (data / "run").mkdir(parents=True)
    ws.mkdir(parents=True)
    for path in (data, data / "workspaces"):
        path.chmod(0o711)
    (data / "token").write_text("secret")
    (data / "token").chmod(0o600)
    (ws / "main.py").write_text(
        "import os\nprint(os.getuid(), os.environ['USER'])\n"
        "try:\n    open('../../token').read()\nexcept OSError as exc:\n"
        "    print(type(exc).__name__)\nopen('out.txt', 'w').write('ok')\n"
    )
    spec = ShimSpec(
        task_id="warm",
        argv=[sys.executable, "-u", "main.py"],
        cwd=str(ws),
        env={"PATH": "/usr/bin:/bin"},
        stdout_path=str(data / "out.log"),
        stderr_path=str(data / "err.log"),
        state_path=str(data / "run" / "state.json"),
        exit_path=str(data / "run" / "exit.json"),
        timeout_s=60,
        grace_s=1,
        max_log_bytes=2**20,
        user={"name": "nobody", "uid": nobody.pw_uid, "gid": nobody.pw_gid, "home": ""},
    )
    spec.dump(data / "run" / "spec.json")
    runner = (
        "import sys\nfrom vrungpu_gateway.engine.inprocess import launch_fork\n"
        "from vrungpu_gateway.engine.shim import run_shim\n"
        "sys.exit(run_shim(sys.argv[1], launch=launch_fork))\n"
    )
    subprocess.run(
        [sys.executable, "-c", runner, str(data / "run" / "spec.json")],
        cwd=REPO,
        check=True,
        timeout=60,
    )
    result = json.loads((data / "run" / "exit.json").read_text())
    assert result["return_code"] == 0, (data / "err.log").read_text()
    printed = (data / "out.log").read_text().split()
    assert printed == [str(nobody.pw_uid), "nobody", "PermissionError"]
    assert (ws / "out.txt").stat().st_uid == nobody.pw_uid
    assert (ws.stat().st_uid, mode(ws)) == (0, 0o700)


PRYING_HANDLER = """
import os

def load(model_dir):
    return model_dir

def predict(model, data):
    root = os.path.dirname(os.path.dirname(model))
    seen = {"uid": os.getuid()}
    for name in ("token", "vrungpu.db", os.path.join("models", os.path.basename(model))):
        try:
            path = os.path.join(root, name)
            os.listdir(path) if name.startswith("models") else open(path).close()
            seen[name] = "read"
        except OSError as exc:
            seen[name] = type(exc).__name__
    try:
        open(os.path.join(model, "handler.py"), "a").close()
        seen["change model"] = "done"
    except OSError as exc:
        seen["change model"] = type(exc).__name__
    return seen
"""


@needs_root
@needs_system_python
@needs_readable_checkout
def test_a_model_worker_runs_the_models_code_as_the_job_user(
    start_gateway: Callable[..., GatewayProcess], open_base: Path
) -> None:
    gw = start_gateway(
        open_base / "data", token="", extra=["--python", SYSTEM_PYTHON, "--job-user", "nobody"]
    )
    files = [
        ("model_file", ("weights.txt", b"1")),
        ("files", ("handler.py", PRYING_HANDLER.encode())),
    ]
    model = gw.api.post("/model/register", files=files, data={"name": "prying"}).json()
    res = gw.api.post(
        f"/model/{model['model_id']}/inference", json={"input_data": {}, "sync": True}
    )
    assert res.status_code == 200, res.text
    task = res.json()
    assert task["status"] == "completed", task
    seen = task["result"]
    assert seen["uid"] in TASK_IDS  # the worker's own uid, with nobody's rights
    assert seen["token"] == seen["vrungpu.db"] == "PermissionError"
    assert seen["change model"] == "PermissionError"  # its model: read, never changed
    [worker] = gw.api.get("/models/workers").json()["workers"]
    command = Path(f"/proc/{worker['pid']}/cmdline").read_bytes()  # what every user can read
    assert model["model_id"].encode() not in command and b"/models/" not in command
    ws = gw.data_dir / "workspaces" / task["task_id"]
    assert (ws.stat().st_uid, mode(ws)) == (0, 0o700)


PROVE_UID_AND_TOKEN = """
    try:
        open({token!r}).read()
        token = "read"
    except OSError as exc:
        token = type(exc).__name__
    with open({proof!r}, "w") as fh:
        fh.write(f"{{os.getuid()}} {{token}}")"""


@needs_root
@needs_system_python
@needs_readable_checkout
def test_a_requirements_build_runs_the_packages_code_unprivileged(
    start_gateway: Callable[..., GatewayProcess], open_base: Path
) -> None:
    """A source build runs the package's own code: never as root (it read the token)."""
    gw = start_gateway(
        open_base / "data",
        token="",
        extra=["--python", SYSTEM_PYTHON, "--job-user", "nobody", "--gpus", "none"],
        env={"UV_OFFLINE": "1", "UV_NO_CONFIG": "1"},
    )
    proof = open_base / "proof"
    prove = PROVE_UID_AND_TOKEN.format(token=str(gw.data_dir / "token"), proof=str(proof))
    requirement = source_project(open_base / "proved", "provedpkg", "built", prove)
    open_base.chmod(0o733)  # the builder may write its proof there, not list it
    code = "import provedpkg\nprint(provedpkg.VALUE)\n"
    task_id = gw.api.submit(code, requirements=[requirement])
    task = gw.api.wait_status(task_id, "completed", "failed", timeout_s=180)
    assert task["status"] == "completed", task
    assert task["stdout"].strip().splitlines()[-1] == "built"
    uid, token_read = proof.read_text().split()
    assert int(uid) in TASK_IDS and token_read == "PermissionError"
    [env] = [p.parent for p in (gw.data_dir / "envs").glob("*/vrungpu-env.json")]
    assert env.stat().st_uid == 0 and mode(env) == 0o755  # ours now, readable, not writable
    assert all(p.lstat().st_uid == 0 for p in env.rglob("*"))
    assert not list((gw.data_dir / "envs").glob(".*uv-cache"))


HOPPER = """
import os, sys, time
if os.fork():
    os._exit(0)
os.setsid()
print(os.getpid(), flush=True)
os.close(1)
end = time.monotonic() + 60
while time.monotonic() < end:  # a new pid every few ms: a kill by pids always comes late
    if os.fork():
        os._exit(0)
    time.sleep(0.01)
"""


def _pids_of(uid: int) -> set[int]:
    """Every process of ``uid`` (zombies too: here nobody may reap what was reparented)."""
    found = set()
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            status = (entry / "status").read_text()
            if int(status.split("\nUid:", 1)[1].split()[0]) == uid:
                found.add(int(entry.name))
    return found


@needs_root
@needs_system_python
def test_a_uid_is_emptied_at_once_even_of_a_process_that_keeps_changing_pid() -> None:
    uid = TASK_IDS.start + 777
    starter = subprocess.Popen(
        ["/usr/bin/env", "-i", SYSTEM_PYTHON, "-c", HOPPER],
        stdout=subprocess.PIPE,
        user=uid,
        group=uid,
        extra_groups=[],
    )
    assert starter.stdout is not None
    assert starter.stdout.readline().strip()  # the hopper runs
    starter.stdout.close()
    starter.wait(timeout=10)
    before = _pids_of(uid)
    wait_for(lambda: _pids_of(uid) - before, 10, what="the hopper to take new pids")
    containment.kill_uid(uid, uid)
    settled = _pids_of(uid)
    time.sleep(0.3)
    assert _pids_of(uid) <= settled  # no new pid: nothing of the uid runs any more
    assert not containment.owned_by(uid)


@needs_root
def test_an_accounts_uid_is_never_emptied() -> None:
    """nobody runs other things too (this suite's PostgreSQL): only a task's own uid goes."""
    nobody = pwd.getpwnam("nobody")
    other = subprocess.Popen(["sleep", "60"], user=nobody.pw_uid, group=nobody.pw_gid)
    try:
        containment.kill_uid(nobody.pw_uid, nobody.pw_gid)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()

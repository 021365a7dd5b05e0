"""Warm start: a job forked by launch_fork, directly or through the zygote, is `python -u ENTRY`.

Each semantics test runs the same job three ways and compares what it printed and how it ended:
cold (``python -u ENTRY`` in a subprocess, the reference), ``fork`` (launch_fork called in a
fresh interpreter by ``tests/zygote_helpers.py``) and ``zygote`` (a shim forked by a real
zygote, which calls launch_fork). Real processes throughout; the stand-in shim only launches
the job, waits for it and writes its exit code to a file.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import wait_for
from vrungpu_gateway.engine.zygote import Zygote

FAKE_SHIM = "tests.zygote_helpers:fake_shim"
JOB_ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "LANG": "C.UTF-8",  # no locale coercion: a cold python then adds nothing to the env
    "PYTHONUNBUFFERED": "1",
    "VRUNGPU_TASK_ID": "task-zygote",
    "CUDA_VISIBLE_DEVICES": "3",
}


@dataclass(frozen=True)
class Ran:
    returncode: int | None
    stdout: str
    stderr: str
    error: str | None = None  # launch_fork's OSError, when it refused


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


class Runner:
    """Runs a job in one mode and, for comparison, cold."""

    def __init__(self, mode: str, tmp: Path, zygote: Zygote | None, preload: str = "") -> None:
        self.mode, self.tmp, self.zygote, self.preload = mode, tmp, zygote, preload
        self.count = 0
        self.pids: list[int] = []  # shims and jobs, killed at teardown if still there

    def workspace(self, files: dict[str, str]) -> Path:
        ws = self.tmp / "ws"
        for name, text in files.items():
            (ws / name).parent.mkdir(parents=True, exist_ok=True)
            (ws / name).write_text(textwrap.dedent(text))
        return ws

    def write_spec(self, argv: list[str], cwd: Path, **extra: Any) -> dict[str, Any]:
        self.count += 1
        run = self.tmp / f"run{self.count}"
        run.mkdir()
        spec = {
            "argv": [sys.executable, "-u", *argv],
            "cwd": str(cwd),
            "env": extra.pop("env", JOB_ENV),
            **{name: str(run / name) for name in ("stdout", "stderr", "pid", "result")},
            **extra,
        }
        Path(run / "spec.json").write_text(json.dumps(spec))
        return {"path": run / "spec.json", **spec}

    async def warm(self, argv: list[str], cwd: Path, **extra: Any) -> Ran:
        spec = self.write_spec(argv, cwd, **extra)
        if self.zygote is not None:
            self.pids.append(await self.zygote.spawn(spec["path"], entry=FAKE_SHIM))
        else:
            preload = ["--preload", self.preload] if self.preload else []
            command = [sys.executable, "-m", "tests.zygote_helpers", *preload, str(spec["path"])]
            await asyncio.to_thread(subprocess.run, command, check=True, timeout=120)
        result_path = Path(spec["result"])
        await asyncio.to_thread(wait_for, result_path.exists, 60, what="the job's result")
        result = json.loads(result_path.read_text())
        if Path(spec["pid"]).exists():
            self.pids.append(json.loads(Path(spec["pid"]).read_text())["pid"])
        return Ran(
            result.get("returncode"),
            Path(spec["stdout"]).read_text(),
            Path(spec["stderr"]).read_text(),
            result.get("error"),
        )

    async def cold(self, argv: list[str], cwd: Path, env: dict[str, str] = JOB_ENV) -> Ran:
        proc = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-u", *argv],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            start_new_session=True,
            timeout=120,
        )
        return Ran(proc.returncode, proc.stdout, proc.stderr)

    async def both(self, argv: list[str], cwd: Path) -> tuple[Ran, Ran]:
        return await self.warm(argv, cwd), await self.cold(argv, cwd)

    def cleanup(self) -> None:
        for pid in self.pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """Unix socket paths must stay under 108 bytes; pytest's tmp_path can be longer."""
    path = Path(tempfile.mkdtemp(prefix="zyg", dir="/tmp"))
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


async def start_zygote(folder: Path, preload: list[str] | None = None) -> Zygote:
    return await Zygote.start(
        python=sys.executable,
        socket_path=folder / "z.sock",
        preload=preload or [],
        log_path=folder / "zygote.log",
    )


@pytest.fixture
async def zygote(short_dir: Path) -> AsyncIterator[Zygote]:
    zygote = await start_zygote(short_dir)
    yield zygote
    await zygote.close()


@pytest.fixture(params=["fork", "zygote"])
async def runner(
    request: pytest.FixtureRequest, tmp_path: Path, short_dir: Path
) -> AsyncIterator[Runner]:
    zygote = await start_zygote(short_dir) if request.param == "zygote" else None
    runner = Runner(request.param, tmp_path, zygote)
    yield runner
    runner.cleanup()
    if zygote is not None:
        await zygote.close()


# -- what the job sees ------------------------------------------------------------------------
async def test_main_name_argv_and_file(runner: Runner) -> None:
    ws = runner.workspace(
        {"main.py": "import sys\nprint(__name__, __file__, sys.argv, sys.orig_argv)\n"}
    )
    warm, cold = await runner.both(["main.py", "a", "b c", "--flag", "ünï"], ws)
    assert warm == cold
    assert cold.stdout.startswith(f"__main__ {ws / 'main.py'} ['main.py', 'a', 'b c', '--flag'")


async def test_imports_relative_to_the_entry_folder(runner: Runner) -> None:
    ws = runner.workspace(
        {
            "src/train.py": """
                import sys
                import helper
                print(sys.path[0], helper.WHERE)
            """,
            "src/helper.py": "WHERE = __file__\n",
            "helper.py": "raise SystemExit('the cwd must not shadow the entry folder')\n",
        }
    )
    warm, cold = await runner.both(["src/train.py"], ws)
    assert warm == cold
    assert cold.stdout.split()[:2] == [str(ws / "src"), str(ws / "src" / "helper.py")]


async def test_working_directory(runner: Runner) -> None:
    ws = runner.workspace({"main.py": "import os\nprint(os.getcwd(), open('data.txt').read())\n"})
    (ws / "data.txt").write_text("data")
    warm, cold = await runner.both(["main.py"], ws)
    assert warm == cold == Ran(0, f"{ws} data\n", "")


async def test_uncaught_exception_prints_the_traceback_and_exits_1(runner: Runner) -> None:
    ws = runner.workspace(
        {"main.py": "def fail():\n    raise ValueError('boom')\nprint('before')\nfail()\n"}
    )
    warm, cold = await runner.both(["main.py"], ws)
    assert warm == cold
    assert cold.returncode == 1
    assert cold.stderr.startswith("Traceback (most recent call last):\n")
    assert cold.stderr.endswith("ValueError: boom\n")


@pytest.mark.parametrize(
    ("code", "returncode"),
    [
        ("import sys\nsys.exit(3)\n", 3),
        ("import sys\nsys.exit('bye')\n", 1),
        ("raise SystemExit\n", 0),
        ("def broken(:\n", 1),
        ("import os, sys\nsys.stdout.close()\nprint('x', file=sys.stderr)\n", 0),
    ],
    ids=["int", "message", "none", "syntax-error", "closed-stdout"],
)
async def test_exit_codes(runner: Runner, code: str, returncode: int) -> None:
    ws = runner.workspace({"main.py": code})
    warm, cold = await runner.both(["main.py"], ws)
    assert warm == cold
    assert cold.returncode == returncode


@pytest.mark.parametrize("method", ["spawn", "fork"])
async def test_multiprocessing_inside_the_job(runner: Runner, method: str) -> None:
    ws = runner.workspace(
        {
            "main.py": f"""
                import multiprocessing as mp
                from helper import cube

                def square(x):
                    return x * x

                if __name__ == "__main__":
                    with mp.get_context("{method}").Pool(2) as pool:
                        print(pool.map(square, range(5)), pool.map(cube, range(3)))
            """,
            "helper.py": "def cube(x):\n    return x ** 3\n",
        }
    )
    warm, cold = await runner.both(["main.py"], ws)
    assert warm == cold == Ran(0, "[0, 1, 4, 9, 16] [0, 1, 8]\n", "")


async def test_environment_is_exactly_the_jobs(runner: Runner) -> None:
    ws = runner.workspace(
        {
            "main.py": """
                import json, os, subprocess, sys
                show = "import os, json; print(json.dumps(dict(os.environ)))"
                child = [sys.executable, "-c", show]
                print(json.dumps(dict(os.environ)))
                print(subprocess.run(child, capture_output=True, text=True).stdout, end="")
                print(os.getenv("CUDA_VISIBLE_DEVICES"), os.getenv("HOME"))
            """
        }
    )
    warm, cold = await runner.both(["main.py"], ws)
    assert warm == cold
    own, child, last = cold.stdout.splitlines()
    assert json.loads(own) == json.loads(child) == JOB_ENV
    assert last == "3 None"


async def test_signals_process_group_and_termination(runner: Runner) -> None:
    ws = runner.workspace(
        {
            "main.py": """
                import os, signal, time
                print({s.name: repr(signal.getsignal(s)) for s in signal.valid_signals()
                       if signal.getsignal(s) not in (signal.SIG_DFL, None)})
                print(os.getpgrp() == os.getpid(), signal.pthread_sigmask(signal.SIG_BLOCK, []))
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)
            """
        }
    )
    warm, cold = await runner.both(["main.py"], ws)
    assert warm == cold
    assert cold.returncode == -signal.SIGTERM
    assert "'SIGPIPE': '<Handlers.SIG_IGN: 1>'" in cold.stdout
    assert "True set()" in cold.stdout


async def test_keyboard_interrupt_ends_by_sigint(runner: Runner) -> None:
    ws = runner.workspace(
        {
            "main.py": """
                import os, signal, time
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(30)
            """
        }
    )
    warm, cold = await runner.both(["main.py"], ws)
    assert warm == cold
    assert cold.returncode == -signal.SIGINT
    assert cold.stderr.endswith("KeyboardInterrupt\n")


async def test_stdio_fds_threads_and_atexit(runner: Runner) -> None:
    ws = runner.workspace(
        {
            "main.py": """
                import atexit, os, sys, threading, time
                print(type(sys.stdout.buffer).__name__, sys.stdout.write_through,
                      sys.stdout.line_buffering, sys.stdin.read() == "", sys.stdout.name)
                print(sorted(int(fd) for fd in os.listdir("/proc/self/fd"))[:3],
                      len(os.listdir("/proc/self/fd")))
                sys.stdout.write("partial line without newline; ")
                os.write(1, b"then the fd itself\\n")

                def late():
                    time.sleep(0.2)
                    print("thread finished after the main code")

                threading.Thread(target=late).start()
                atexit.register(print, "atexit ran last")
            """
        }
    )
    warm, cold = await runner.both(["main.py"], ws)
    assert warm == cold
    assert cold.stdout.splitlines() == [
        "FileIO True False True <stdout>",
        "[0, 1, 2] 4",  # 0-2 and the fd listdir itself holds open
        "partial line without newline; then the fd itself",
        "thread finished after the main code",
        "atexit ran last",
    ]


async def test_preloaded_torch_leaves_cuda_lazy(tmp_path: Path, short_dir: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("numpy")
    job = """
        import os, sys
        preloaded = "torch" in sys.modules
        import numpy, torch
        print(preloaded, torch.cuda.is_initialized(), os.environ["CUDA_VISIBLE_DEVICES"])
        print(torch.initial_seed(), numpy.random.randint(2**31))
    """
    zygote = await start_zygote(short_dir, preload=["torch", "numpy"])
    runners = [
        Runner("fork", tmp_path / "fork", None, preload="torch,numpy"),
        Runner("zygote", tmp_path / "zygote", zygote),
    ]
    try:
        for runner in runners:
            runner.tmp.mkdir()
            ws = runner.workspace({"main.py": job})
            runs = [await runner.warm(["main.py"], ws) for _ in range(2)]
            for ran in runs:
                assert (ran.returncode, ran.stderr) == (0, "")
                assert ran.stdout.splitlines()[0] == "True False 3"
            # forks of one interpreter must not share its random generators' state
            assert runs[0].stdout.splitlines()[1] != runs[1].stdout.splitlines()[1]
    finally:
        for runner in runners:
            runner.cleanup()
        await zygote.close()


# -- launch errors ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"argv": ["missing.py"]}, "can't open file"),
        ({"cwd": "/nonexistent/folder"}, "cannot enter the working directory"),
        ({"argv": ["main.py", "nul\0byte"]}, "embedded null byte"),
        ({"env": {**JOB_ENV, "BIG": "x" * 200_000}}, "Argument list too long"),
        ({"env": {**JOB_ENV, "A=B": "x"}}, "invalid environment variable name"),
        ({"cgroup_procs": "/nonexistent/cgroup.procs"}, "cannot join the job's cgroup"),
    ],
    ids=["missing-entry", "bad-cwd", "nul-in-args", "env-too-big", "bad-env-name", "cgroup"],
)
async def test_launch_errors_are_one_line_oserrors(
    runner: Runner, change: dict[str, Any], message: str
) -> None:
    ws = runner.workspace({"main.py": "print('must not run')\n"})
    extra = dict(change)  # the parameter is shared by both modes
    ran = await runner.warm(extra.pop("argv", ["main.py"]), Path(extra.pop("cwd", ws)), **extra)
    assert ran.returncode is None and ran.stdout == ""
    assert ran.error is not None and message in ran.error and "\n" not in ran.error


async def test_the_job_joins_the_given_cgroup_first(runner: Runner) -> None:
    ws = runner.workspace({"main.py": "print('ran')\n"})
    procs = runner.tmp / "cgroup.procs"  # a plain file stands in for cgroupfs here
    ran = await runner.warm(["main.py"], ws, cgroup_procs=str(procs))
    assert (ran.returncode, ran.stdout, procs.read_text()) == (0, "ran\n", "0")


# -- the zygote ---------------------------------------------------------------------------------
def test_control_socket_protocol(short_dir: Path) -> None:
    path = short_dir / "z.sock"
    command = [sys.executable, "-u", "-m", "vrungpu_gateway.engine.zygote", "--socket", str(path)]
    proc = subprocess.Popen(command, start_new_session=True)
    try:
        wait_for(path.exists, 30, what="the zygote's socket")
        assert path.stat().st_mode & 0o777 == 0o600
        with socket.socket(socket.AF_UNIX) as conn:
            wait_for(lambda: conn.connect_ex(str(path)) == 0, 30, what="a connection")
            replies = conn.makefile("rb")

            def ask(line: bytes) -> dict[str, Any]:
                conn.sendall(line + b"\n")
                return dict(json.loads(replies.readline()))

            assert ask(b'{"ping": true}') == {"pong": True}
            assert "not a JSON line" in ask(b"{nope")["error"]
            assert "spec must be a path" in ask(b"{}")["error"]
            assert (
                "cannot load the shim entry"
                in ask(b'{"spec": "/x", "entry": "no.such:f"}')["error"]
            )
            wait_for(lambda: not path.exists(), 10, what="the socket file to go")
            replies.close()
        assert proc.wait(timeout=30) == 0  # the control connection closed: the zygote exits
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_a_failing_preload_fails_the_start(short_dir: Path) -> None:
    with pytest.raises(OSError, match="cannot preload no_such_module_for_vrungpu"):
        await start_zygote(short_dir, preload=["no_such_module_for_vrungpu"])


async def test_jobs_outlive_the_zygote(zygote: Zygote, tmp_path: Path) -> None:
    runner = Runner("zygote", tmp_path, zygote)
    ws = runner.workspace(
        {"main.py": "import os, time\nwhile not os.path.exists('go'):\n    time.sleep(0.05)\n"}
    )
    spec = runner.write_spec(["main.py"], ws)
    shim = await zygote.spawn(spec["path"], entry=FAKE_SHIM)
    runner.pids.append(shim)
    try:
        await asyncio.to_thread(wait_for, Path(spec["pid"]).exists, 30, what="the job's pid")
        job = json.loads(Path(spec["pid"]).read_text())["pid"]
        runner.pids.append(job)
        assert os.getsid(shim) == shim and os.getpgid(job) == job
        await zygote.close()
        assert zygote.proc.poll() is not None and not zygote.healthy()
        assert alive(shim) and alive(job)
        (ws / "go").touch()
        result = Path(spec["result"])
        await asyncio.to_thread(wait_for, result.exists, 30, what="the job's result")
        assert json.loads(result.read_text()) == {"returncode": 0}
    finally:
        runner.cleanup()


def children_of(ppid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2 :].split()[1]) == ppid:
                found.append(int(entry.name))
    return found


async def test_the_zygote_leaves_no_zombies(zygote: Zygote, tmp_path: Path) -> None:
    runner = Runner("zygote", tmp_path, zygote)
    ws = runner.workspace({"main.py": "print('ok')\n"})
    try:
        for _ in range(3):
            assert await runner.warm(["main.py"], ws) == Ran(0, "ok\n", "")
        await asyncio.to_thread(
            wait_for, lambda: not children_of(zygote.pid), 30, what="no children of the zygote"
        )
        assert zygote.healthy()
    finally:
        runner.cleanup()


async def test_a_dead_zygote_is_unhealthy_and_refuses_work(zygote: Zygote, tmp_path: Path) -> None:
    os.kill(zygote.pid, signal.SIGKILL)
    await asyncio.to_thread(zygote.proc.wait, 30)
    assert not zygote.healthy()
    with pytest.raises(OSError, match="zygote"):
        await zygote.spawn(tmp_path / "spec.json", entry=FAKE_SHIM)


async def test_the_default_entry_is_the_real_shim(zygote: Zygote, tmp_path: Path) -> None:
    shim = pytest.importorskip("vrungpu_gateway.engine.shim")
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "main.py").write_text("import sys\nprint('from the shim', sys.argv[1:])\nsys.exit(4)\n")
    files = {name: tmp_path / name for name in ("stdout", "stderr", "state", "exit", "spec")}
    shim.ShimSpec(
        task_id="task-real-shim",
        argv=[sys.executable, "-u", "main.py", "x"],
        cwd=str(ws),
        env=JOB_ENV,
        stdout_path=str(files["stdout"]),
        stderr_path=str(files["stderr"]),
        state_path=str(files["state"]),
        exit_path=str(files["exit"]),
        timeout_s=60,
        grace_s=1,
        max_log_bytes=2**20,
    ).dump(files["spec"])
    pid = await zygote.spawn(files["spec"])
    try:
        await asyncio.to_thread(wait_for, files["exit"].exists, 60, what="the shim's exit file")
        assert json.loads(files["exit"].read_text())["return_code"] == 4
        assert files["stdout"].read_text() == "from the shim ['x']\n"
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)

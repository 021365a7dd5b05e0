"""The `vrungpu-gateway` command: flags and their VRUNGPU_* twins, the start banner, refusals."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import REPO, TOKEN, Gate, GatewayProcess, pid_alive, wait_for
from vrungpu_gateway import __version__
from vrungpu_gateway.cli import build_parser

# A value for each flag's type, given as its environment twin would give it.
ENV_VALUES = {int: ("7", 7), float: ("7.5", 7.5), Path: ("/srv/x", Path("/srv/x"))}


def _flags() -> list[argparse.Action]:
    skip = {"help", "version"}
    return [a for a in build_parser()._actions if a.dest not in skip]


@pytest.mark.parametrize("action", _flags(), ids=lambda a: a.option_strings[0])
def test_every_flag_has_a_vrungpu_env_twin(
    action: argparse.Action, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "VRUNGPU_" + action.dest.upper()
    if isinstance(action, argparse._StoreTrueAction):
        raw, expected = "1", True
    elif isinstance(action, argparse._AppendAction):
        raw, expected = (
            "http://a.example,http://b.example",
            ["http://a.example", "http://b.example"],
        )
    else:
        raw, expected = ENV_VALUES.get(action.type, ("from-env", "from-env"))  # type: ignore[arg-type]
    monkeypatch.setenv(name, raw)
    assert getattr(build_parser().parse_args([]), action.dest) == expected, name
    assert action.help, f"{action.option_strings[0]} needs help text"


def test_a_flag_wins_over_its_env_twin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VRUNGPU_CPU_SLOTS", "7")
    assert build_parser().parse_args(["--cpu-slots", "3"]).cpu_slots == 3


@pytest.fixture(scope="module")
def env_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway without GPUs configured through VRUNGPU_* variables alone: one CPU slot, a
    default timeout of 42 s, and jobs run by a wrapper around the interpreter."""
    tmp = tmp_path_factory.mktemp("cli")
    wrapper = tmp / "python-wrapper"
    wrapper.write_text(f'#!/bin/sh\nexport RUN_BY_WRAPPER=yes\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    env = {
        "VRUNGPU_CPU_SLOTS": "1",
        "VRUNGPU_DEFAULT_TIMEOUT": "42",
        "VRUNGPU_PYTHON": str(wrapper),
    }
    gw = GatewayProcess(tmp / "data", gpus="none", env=env).start()
    yield gw
    gw.stop()


def test_start_banner_prints_the_url_not_a_given_token(env_gateway: GatewayProcess) -> None:
    """As Jupyter does: a token the operator gave is not repeated in the log (a generated one
    is, see tests/test_secrets.py)."""
    log = env_gateway.log()
    data = env_gateway.data_dir.resolve()
    assert f"VrunGPU gateway {__version__}: 0 GPU(s) [none], 1 CPU slot(s), data in {data}" in log
    shown = "?token=<the token you gave>"
    assert f"Listening on {env_gateway.url}\n    {env_gateway.url}/{shown}\n" in log
    assert f"dashboard: {env_gateway.url}/dashboard/{shown}" in log
    assert TOKEN not in log


def test_python_and_default_timeout_from_the_environment(env_gateway: GatewayProcess) -> None:
    api = env_gateway.api
    code = "import os\nprint(os.environ.get('RUN_BY_WRAPPER'))"
    task = api.post("/run/sync", json={"code": code}).json()
    assert task["status"] == "completed" and task["stdout"] == "yes\n"
    assert task["timeout"] == 42 and task["device"] == "cpu"


def test_cpu_slots_from_the_environment(
    env_gateway: GatewayProcess, make_gate: Callable[[], Gate]
) -> None:
    api = env_gateway.api
    gate = make_gate()
    first, second = api.submit(gate.code), api.submit("print('second')")
    api.wait_status(first, "running")
    pool = api.get("/gpu/pool").json()
    assert pool["cpu_slots"] == 1 and pool["cpu_busy"] == [first]
    assert api.task(second)["status"] == "queued"  # one slot: the second waits for it
    gate.open()
    assert api.wait_status(second, "completed")["stdout"] == "second\n"


def _nvml_present() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


@pytest.mark.skipif(_nvml_present(), reason="this host has NVML: see tests/test_gpu_real.py")
def test_gpus_by_index_are_refused_without_nvml(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "vrungpu_gateway", "--port", "0", "--gpus", "0,2"]
    cmd += ["--data-dir", str(tmp_path / "data"), "--token", TOKEN]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRUNGPU_")}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("vrungpu-gateway: --gpus 0,2: NVML unavailable")
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_stops_the_gateway_cleanly(
    start_gateway: Callable[..., GatewayProcess], sig: signal.Signals, gate: Gate
) -> None:
    gw = start_gateway(gpus="sim:1", extra=["--on-stop", "kill"])
    task_id = gw.api.submit("import os\nprint(os.getpid(), flush=True)\n" + gate.code)
    pid = int(wait_for(lambda: gw.api.task(task_id)["stdout"], 10))
    assert gw.stop(sig, end_jobs=False) == 0  # Ctrl-C is a clean stop, as SIGTERM is
    assert not (gw.data_dir / "gateway.json").exists()
    wait_for(lambda: not pid_alive(pid), 10, what="the running job ended (--on-stop kill)")
    assert "stopping: no new requests" in gw.log()

"""``%%vrungpu --session``: persistent remote kernels from a local notebook, against a real
gateway (``--gpus sim:2``): nbclient runs of notebooks/sessions.ipynb and of a fresh kernel that
finds the same session, a failing remote cell, interrupting a session cell from a jupyter_client
kernel, and the magic's session commands in an in-process IPython shell.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from IPython.core.error import UsageError  # noqa: E402
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402
from IPython.utils.capture import capture_output  # noqa: E402
from nbclient import NotebookClient  # noqa: E402
from nbclient.exceptions import CellExecutionError  # noqa: E402
from nbformat.v4 import new_code_cell, new_notebook  # noqa: E402

from tests.support import REPO, TOKEN, Api, GatewayProcess  # noqa: E402
from tests.test_notebooks import (  # noqa: E402
    Kernel,
    cell_starting,
    errors_of,
    execute_notebook,
    kernel_env,
    kernels,  # noqa: F401 - the fixture: jupyter_client kernels with the magic loaded
    text_of,
)
from vrungpu_magic.awaited import _magic_call  # noqa: E402
from vrungpu_magic.magic import VrunGPUMagics  # noqa: E402
from vrungpu_magic.publish import RemoteError  # noqa: E402
from vrungpu_magic.render import ANSI_RE  # noqa: E402
from vrungpu_magic.sessions import names_session  # noqa: E402

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def gateway(module_gateway: GatewayProcess) -> GatewayProcess:
    """One gateway for this module; each test stops the sessions it starts."""
    return module_gateway


def sessions(api: Api, name: str | None = None) -> list[dict[str, Any]]:
    res = api.get("/api/kernels", params={"session": name} if name else None)
    assert res.status_code == 200, res.text
    return [k for k in res.json() if name is None or k.get("session") == name]


def outputs_of(cell: Any, output_type: str) -> list[Any]:
    return [out for out in cell.outputs if out.output_type == output_type]


def notebook(*sources: str) -> Any:
    return new_notebook(
        cells=[new_code_cell(s) for s in sources],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}},
    )


# -- notebooks -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_sessions_notebook_then_a_fresh_kernel_finds_the_same_session(
    gateway: GatewayProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = gateway.api
    env = kernel_env(gateway, "off", tmp_path)
    nb = nbformat.read(REPO / "notebooks" / "sessions.ipynb", as_version=4)
    nb.cells = [c for c in nb.cells if "cleanup" not in c.metadata.get("tags", [])]
    path = tmp_path / "sessions.ipynb"
    nbformat.write(nb, path)
    nb = execute_notebook(path, env, monkeypatch)

    started = text_of(cell_starting(nb, "%%vrungpu --session demo --gpus 1"))
    [kernel] = sessions(api, "demo")
    assert f"Session demo: started kernel {kernel['id']} on GPU {kernel['gpus'][0]}" in started
    assert f"CUDA_VISIBLE_DEVICES = {kernel['gpus'][0]}" in started
    assert kernel["name"] == "vrungpu-1gpu" and len(kernel["gpus"]) == 1
    assert kernel["id"] in gateway.api.get("/gpu/pool").json()["allocations"]
    assert text_of(cell_starting(nb, '%%vrungpu --session demo\nprint("x + 1')) == "x + 1 = 42\n"

    [figure] = outputs_of(
        cell_starting(nb, "%%vrungpu --session demo\nimport matplotlib"), "display_data"
    )
    assert base64.b64decode(figure.data["image/png"]).startswith(b"\x89PNG")
    [table] = outputs_of(
        cell_starting(nb, "%%vrungpu --session demo\nimport pandas"), "execute_result"
    )
    assert "<table" in table.data["text/html"] and "loss" in table.data["text/html"]
    assert "epoch" in table.data["text/plain"]

    assert "Pushed config to session demo" in text_of(cell_starting(nb, "config = "))
    pulled = text_of(cell_starting(nb, "%vrungpu pull demo summary"))
    assert "Pulled summary from session demo" in pulled
    assert "{'lr': 0.1, 'x': 41, 'final_loss': 0.3}" in pulled

    failing = cell_starting(nb, '%%vrungpu --session demo\nprint("about to divide')
    [error] = errors_of(failing)
    assert (error.ename, error.evalue) == ("ZeroDivisionError", "division by zero")
    assert any("1 / 0" in ANSI_RE.sub("", line) for line in error.traceback)
    assert any("\x1b[" in line for line in error.traceback)  # the remote colours are kept
    assert "about to divide by zero\n" in text_of(failing)
    assert "still here: x = 41" in text_of(
        cell_starting(nb, '%%vrungpu --session demo\nprint("still')
    )
    listed = text_of(cell_starting(nb, "%vrungpu sessions"))
    assert "demo" in listed and kernel["id"] in listed and "GPU" in listed

    # a fresh local kernel names the session: the remote state is intact; then stop it
    again = notebook(
        "%load_ext vrungpu_magic",
        '%%vrungpu --session demo\nprint("x =", x, "lr =", config["lr"], "rows =", len(losses))',
        "%vrungpu stop demo",
        "%vrungpu sessions",
    )
    nbformat.write(again, tmp_path / "again.ipynb")
    again = execute_notebook(tmp_path / "again.ipynb", env, monkeypatch)
    assert text_of(again.cells[1]) == "x = 41 lr = 0.1 rows = 3\n"  # no "started" line
    assert f"Stopped session demo (kernel {kernel['id']}" in text_of(again.cells[2])
    assert text_of(again.cells[3]) == "No sessions."
    assert sessions(api) == []
    assert kernel["id"] not in api.get("/gpu/pool").json()["allocations"]


@pytest.mark.slow
def test_a_remote_exception_fails_the_local_cell(
    gateway: GatewayProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nb = notebook(
        "%load_ext vrungpu_magic",
        '%%vrungpu --session failing --cpu\nanswer = input("name? ")',
        '%%vrungpu --session failing\nprint("before")\nraise ValueError("bad input")',
        'print("not reached")',
    )
    nb.cells[1].metadata["tags"] = ["raises-exception"]
    for key, value in kernel_env(gateway, "off", tmp_path).items():
        monkeypatch.setenv(key, value)
    client = NotebookClient(nb, kernel_name="python3", timeout=120, startup_timeout=60)
    try:
        with pytest.raises(CellExecutionError) as failed:
            client.execute()
    finally:
        for kernel in sessions(gateway.api, "failing"):
            gateway.api.delete(f"/api/kernels/{kernel['id']}")
    assert "ValueError: bad input" in ANSI_RE.sub("", str(failed.value))
    [error] = errors_of(nb.cells[2])
    assert (error.ename, error.evalue) == ("ValueError", "bad input")
    assert text_of(nb.cells[2]).startswith("before\n")
    assert nb.cells[3].outputs == [] and nb.cells[3].get("execution_count") is None
    # nbclient reads no stdin: the remote input() fails as a local one would under nbclient
    [stdin_error] = errors_of(nb.cells[1])
    assert stdin_error.ename == "StdinNotImplementedError"


# -- interrupting --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("widgets", ["off", "on"])
def test_interrupting_a_session_cell_interrupts_the_kernel_and_keeps_the_session(
    kernels: Callable[[str], Kernel],  # noqa: F811 - the fixture imported above
    gateway: GatewayProcess,
    widgets: str,
) -> None:
    kernel = kernels(widgets)
    name = f"interrupted-{widgets}"
    try:
        assert not kernel.run(f"%%vrungpu --session {name} --cpu\nx = 1").errors
        msg_id = kernel.execute(
            f"%%vrungpu --session {name}\nimport time\nprint('started', flush=True)\n"
            "time.sleep(120)\nprint('not reached')"
        )
        seen = kernel.collect(msg_id, until=lambda o: "started" in o.stdout, timeout_s=60)
        kernel.km.interrupt_kernel()
        outputs = kernel.collect(msg_id, seen, timeout_s=60)
        [remote] = sessions(gateway.api, name)
        [error] = outputs.errors
        assert error["ename"] == "SessionInterrupted"
        assert error["traceback"] == [
            f"Interrupted: interrupted session {name} (kernel {remote['id']}); the session lives on"
        ]
        assert "not reached" not in outputs.stdout
        assert remote["execution_state"] == "idle"
        after = kernel.run(f"%%vrungpu --session {name}\nprint('alive, x =', x)")
        assert not after.errors and after.stdout == "alive, x = 1\n"
    finally:
        kernel.run(f"%vrungpu stop {name}")
    assert sessions(gateway.api, name) == []


# -- the magic's commands, in process ------------------------------------------------------------


@pytest.fixture(scope="module")
def shell() -> InteractiveShell:
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "vrungpu_magic")
    return ip


@pytest.fixture
def magics(
    shell: InteractiveShell,
    gateway: GatewayProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[VrunGPUMagics]:
    for name in ("VRUNGPU_URL", "VRUNGPU_TOKEN", "VRUNGPU_WIDGETS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VRUNGPU_CONFIG", str(tmp_path / "no-config.json"))
    vm: VrunGPUMagics = shell.magics_manager.registry["VrunGPUMagics"]
    vm.url, vm.token, vm.widgets = gateway.url, TOKEN, "off"
    yield vm
    vm.url, vm.token, vm.widgets, vm.max_push_mb = "", "", "auto", 512


def cell(shell: InteractiveShell, line: str, body: str) -> None:
    shell.run_cell_magic("vrungpu", line, body)


def test_push_over_the_limit_is_refused_before_anything_is_sent(
    shell: InteractiveShell, magics: VrunGPUMagics, gateway: GatewayProcess, capsys: Any
) -> None:
    try:
        cell(shell, "--session capped --cpu", "marker = 1")
        shell.user_ns["big"] = b"x" * (2 * 1024 * 1024)
        with pytest.raises(
            UsageError,
            match=r"^%vrungpu push: big pickle to 2\.0 MB, over the "
            r"limit of 1 MB \(--max-push-mb\)$",
        ):
            shell.run_line_magic("vrungpu", "push capped big --max-push-mb 1")
        magics.max_push_mb = 1.5  # %config VrunGPUMagics.max_push_mb = 1.5
        with pytest.raises(UsageError, match=r"2\.0 MB, over the limit of 1\.5 MB"):
            shell.run_line_magic("vrungpu", "push capped big")
        with pytest.raises(UsageError, match=r"NameError: name 'big' is not defined"):
            shell.run_line_magic("vrungpu", "pull capped big")  # nothing arrived
        shell.user_ns["small"] = {"a": [1, 2, 3]}
        shell.run_line_magic("vrungpu", "push capped small")
        cell(shell, "--session capped", "small['a'].append(4); grown = b'y' * (2 * 1024 * 1024)")
        with pytest.raises(UsageError, match=r"grown pickle to 2\.0 MB, over the limit"):
            shell.run_line_magic("vrungpu", "pull capped grown")
        shell.run_line_magic("vrungpu", "pull capped small")
        assert shell.user_ns["small"] == {"a": [1, 2, 3, 4]}
    finally:
        shell.run_line_magic("vrungpu", "stop capped")
    assert "Stopped session capped" in capsys.readouterr().out


def test_session_mistakes_are_one_line(
    shell: InteractiveShell, magics: VrunGPUMagics, gateway: GatewayProcess
) -> None:
    with pytest.raises(UsageError, match="give one of --gpus K, --gpu N or --cpu"):
        cell(shell, "--session s --cpu --gpus 2", "x = 1")
    with pytest.raises(UsageError, match="unrecognized arguments: --timeout 5"):
        cell(shell, "--session s --timeout 5", "x = 1")
    with pytest.raises(UsageError, match="runs a cell"):
        shell.run_line_magic("vrungpu", "--session s")
    with pytest.raises(UsageError, match=r"^%vrungpu stop: no session 'nosuch'"):
        shell.run_line_magic("vrungpu", "stop nosuch")
    with pytest.raises(UsageError, match=r"^%vrungpu push: missing_var is not defined here$"):
        shell.run_line_magic("vrungpu", "push nosuch missing_var")
    with pytest.raises(UsageError, match=r"^%vrungpu pull: no session 'nosuch'"):
        shell.run_line_magic("vrungpu", "pull nosuch x")
    with pytest.raises(UsageError, match="404"):
        cell(shell, "--session s --gpus 9", "x = 1")  # no vrungpu-9gpu on a 2-GPU host
    assert sessions(gateway.api) == []


def test_an_existing_session_keeps_its_placement_and_a_lost_kernel_is_reported(
    shell: InteractiveShell, magics: VrunGPUMagics, gateway: GatewayProcess, capsys: Any
) -> None:
    try:
        cell(shell, "--session placed --cpu", "value = 7")
        [first] = sessions(gateway.api, "placed")
        capsys.readouterr()
        cell(shell, "--session placed --gpus 2", "print(value)")
        out, err = capsys.readouterr()
        assert out == "7\n"
        assert "Session placed already runs on CPU (vrungpu-cpu): --gpus 2 ignored" in err
        assert gateway.api.delete(f"/api/kernels/{first['id']}").status_code == 204
        with pytest.raises(RemoteError) as lost:
            cell(shell, "--session placed --cpu", "print(value)")
        assert lost.value.ename == "NameError"
        out, err = capsys.readouterr()
        assert f"Session placed's kernel {first['id']} is gone" in err
        assert "Session placed: started kernel" in out
    finally:
        shell.run_line_magic("vrungpu", "stop placed")


def test_display_updates_and_clear_output_are_published_as_sent(
    shell: InteractiveShell, magics: VrunGPUMagics
) -> None:
    try:
        with capture_output() as shown:
            cell(
                shell,
                "--session shown --cpu",
                "from IPython.display import display\n"
                "handle = display({'text/plain': 'first'}, raw=True, display_id='d1')\n"
                "handle.update({'text/plain': 'second'}, raw=True)\n",
            )
        first, second = shown.outputs
        assert (first.data, first.transient, first.update) == (
            {"text/plain": "first"},
            {"display_id": "d1"},
            False,
        )
        assert (second.data, second.update) == ({"text/plain": "second"}, True)
        with capture_output() as cleared:
            cell(
                shell,
                "--session shown",
                "from IPython.display import clear_output\n"
                "display({'text/plain': 'gone'}, raw=True)\nclear_output()\n"
                "display({'text/plain': 'kept'}, raw=True)",
            )
        assert [out.data for out in cleared.outputs] == [{"text/plain": "kept"}]
    finally:
        shell.run_line_magic("vrungpu", "stop shown")


def test_a_jobs_own_session_argument_is_not_a_session() -> None:
    assert names_session(["--session", "s"]) and names_session(["--cpu", "--session=s"])
    assert not names_session(["--gpus", "2", "--args", "--session", "s"])


def test_session_cells_are_not_awaited() -> None:
    """An awaited cell turns SIGINT into a cancellation the blocked session cell never sees."""
    assert _magic_call("get_ipython().run_cell_magic('vrungpu', '--session s', 'x = 1\\n')") is None
    assert _magic_call("get_ipython().run_cell_magic('vrungpu', '--gpu 0', 'x = 1\\n')") == (
        "--gpu 0",
        "x = 1\n",
    )

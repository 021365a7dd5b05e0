"""%%vrungpu and %vrungpu in an in-process IPython shell, against a real gateway (text mode)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import ExecutionResult, InteractiveShell

from tests.model_helpers import register_plain
from tests.support import TOKEN, Api, Gate, GatewayProcess
from vrungpu_magic.awaited import _AwaitRewriter, _magic_call
from vrungpu_magic.handle import TaskCancelledError, TaskFailedError, TaskHandle
from vrungpu_magic.magic import VrunGPUMagics

SLOW_JOB = "import time\nprint('started', flush=True)\ntime.sleep(30)\n"


@pytest.fixture(autouse=True)
def isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the user's env and config file out of the tests."""
    for name in ("VRUNGPU_URL", "VRUNGPU_TOKEN", "VRUNGPU_WIDGETS"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "vrungpu-config.json"
    monkeypatch.setenv("VRUNGPU_CONFIG", str(path))
    return path


@pytest.fixture(scope="module")
def shell() -> InteractiveShell:
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "vrungpu_magic")
    return ip


@pytest.fixture(scope="module")
def gateway(module_gateway: GatewayProcess) -> GatewayProcess:
    """One gateway for this module's tests (each leaves no task running)."""
    return module_gateway


@pytest.fixture
def magics(shell: InteractiveShell, gateway: GatewayProcess) -> Iterator[VrunGPUMagics]:
    """The loaded magics, pointed at this test's gateway, in text mode."""
    vm: VrunGPUMagics = shell.magics_manager.registry["VrunGPUMagics"]
    vm.url, vm.token, vm.widgets = gateway.url, TOKEN, "off"
    yield vm
    vm.url, vm.token, vm.widgets = "", "", "auto"


def run(shell: InteractiveShell, source: str) -> ExecutionResult:
    return shell.run_cell(source, store_history=False)


def error_of(result: ExecutionResult) -> BaseException:
    assert result.error_in_exec is not None, "the cell should have failed"
    return result.error_in_exec


# -- connection ----------------------------------------------------------------------------------


def test_connect_with_url_and_token(
    shell: InteractiveShell, magics: VrunGPUMagics, gateway: GatewayProcess, capsys: Any
) -> None:
    magics.url = magics.token = ""
    shell.run_line_magic("vrungpu", f"connect {gateway.url} --token {TOKEN}")
    assert f"Connected to {gateway.url}: VrunGPU" in capsys.readouterr().out
    assert (magics.url, magics.token) == (gateway.url, TOKEN)


def test_connect_save_writes_the_config_file(
    shell: InteractiveShell, magics: VrunGPUMagics, gateway: GatewayProcess, isolated_config: Path
) -> None:
    shell.run_line_magic("vrungpu", f"connect {gateway.url} --token {TOKEN} --save")
    assert json.loads(isolated_config.read_text()) == {"url": gateway.url, "token": TOKEN}
    assert isolated_config.stat().st_mode & 0o077 == 0


def test_connection_from_env(
    shell: InteractiveShell,
    magics: VrunGPUMagics,
    gateway: GatewayProcess,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    magics.url = magics.token = ""
    monkeypatch.setenv("VRUNGPU_URL", gateway.url)
    monkeypatch.setenv("VRUNGPU_TOKEN", TOKEN)
    shell.run_line_magic("vrungpu", "connect")
    assert f"Connected to {gateway.url}" in capsys.readouterr().out


def test_connection_from_config_file(
    shell: InteractiveShell,
    magics: VrunGPUMagics,
    gateway: GatewayProcess,
    isolated_config: Path,
    capsys: Any,
) -> None:
    magics.url = magics.token = ""
    isolated_config.write_text(json.dumps({"url": gateway.url, "token": TOKEN}))
    shell.run_line_magic("vrungpu", "connect")
    assert f"Connected to {gateway.url}" in capsys.readouterr().out


def test_connection_from_traitlets(
    shell: InteractiveShell, magics: VrunGPUMagics, gateway: GatewayProcess, capsys: Any
) -> None:
    magics.url = magics.token = ""
    shell.run_line_magic("config", f"VrunGPUMagics.url = {gateway.url!r}")
    shell.run_line_magic("config", f"VrunGPUMagics.token = {TOKEN!r}")
    shell.run_line_magic("vrungpu", "connect")
    assert f"Connected to {gateway.url}" in capsys.readouterr().out


def test_connection_sources_in_order_connect_traitlets_env_file(
    shell: InteractiveShell,
    magics: VrunGPUMagics,
    gateway: GatewayProcess,
    isolated_config: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    unreachable = "http://127.0.0.1:9"
    # env over file: the file's token is wrong, the environment's is right
    isolated_config.write_text(json.dumps({"url": gateway.url, "token": "wrong-token"}))
    monkeypatch.setenv("VRUNGPU_TOKEN", TOKEN)
    magics.url = magics.token = ""
    shell.run_line_magic("vrungpu", "connect")
    assert f"Connected to {gateway.url}" in capsys.readouterr().out
    # traitlets over env: the environment's URL leads nowhere
    monkeypatch.setenv("VRUNGPU_URL", unreachable)
    shell.run_line_magic("config", f"VrunGPUMagics.url = {gateway.url!r}")
    shell.run_line_magic("vrungpu", "connect")
    assert f"Connected to {gateway.url}" in capsys.readouterr().out
    # connect's arguments over the traitlets
    magics.url, magics.token = unreachable, "wrong-token"
    shell.run_line_magic("vrungpu", f"connect {gateway.url} --token {TOKEN}")
    assert f"Connected to {gateway.url}" in capsys.readouterr().out
    assert (magics.url, magics.token) == (gateway.url, TOKEN)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("connect {url} --token wrong-token", "HTTP 401"),
        ("connect http://127.0.0.1:9 --token x", "cannot reach the gateway"),
    ],
)
def test_bad_connection_is_one_line(
    shell: InteractiveShell,
    magics: VrunGPUMagics,
    gateway: GatewayProcess,
    line: str,
    expected: str,
) -> None:
    with pytest.raises(UsageError) as caught:
        shell.run_line_magic("vrungpu", line.replace("{url}", gateway.url))
    message = str(caught.value)
    assert expected in message and "\n" not in message
    assert magics.url == gateway.url  # a failed connect keeps the previous connection


# -- running cells -------------------------------------------------------------------------------


def test_cell_runs_with_progress_and_log(
    shell: InteractiveShell, magics: VrunGPUMagics, api: Api, capsys: Any
) -> None:
    code = (
        "import sys, time\n"
        "for i in range(1, 4):\n"
        "    print(f'[PROGRESS:{i * 25}:step {i}]', flush=True)\n"
        "    time.sleep(0.4)\n"
        "print('to stderr', file=sys.stderr)\n"
        "print('result', 6 * 7)\n"
    )
    result = run(shell, f"%%vrungpu --name magic-run --timeout 60\n{code}")
    out, err = capsys.readouterr()
    assert result.success, result.error_in_exec
    assert "result 42" in out and "to stderr" in err and "to stderr" not in out
    assert re.search(r"^\[ *\d+%\] step \d .*elapsed", out, re.MULTILINE)  # progress lines
    assert "completed in" in out and "(return code 0)" in out
    task = api.get("/tasks").json()[0]
    assert (task["name"], task["status"], task["timeout"]) == ("magic-run", "completed", 60)


def test_failed_job_fails_the_cell_with_its_error(
    shell: InteractiveShell, magics: VrunGPUMagics, capsys: Any
) -> None:
    result = run(shell, "%%vrungpu\nprint('before')\n1 / 0\n")
    exc = error_of(result)
    assert isinstance(exc, TaskFailedError) and not isinstance(exc, TaskCancelledError)
    assert "ZeroDivisionError: division by zero" in str(exc)
    lines = exc._render_traceback_()
    assert len(lines) == 2 and "ZeroDivisionError" in lines[0]
    out, err = capsys.readouterr()
    assert "before" in out and "ZeroDivisionError" in err  # the job's traceback, as a log


def test_env_args_gpu_and_priority_reach_the_job(
    shell: InteractiveShell, magics: VrunGPUMagics, api: Api, capsys: Any
) -> None:
    code = "import os, sys\nprint('env', os.environ['GREETING'], 'argv', sys.argv[1:])\n"
    line = "%%vrungpu --gpu 1 --priority 5 --env GREETING=hello X=1 --args --lr 0.1"
    assert run(shell, f"{line}\n{code}").success
    assert "env hello argv ['--lr', '0.1']" in capsys.readouterr().out
    task = api.get("/tasks").json()[0]
    assert (task["gpu_ids"], task["priority"]) == ([1], 5)


def test_gpus_flag_takes_that_many_gpus(
    shell: InteractiveShell, magics: VrunGPUMagics, api: Api, capsys: Any
) -> None:
    code = "import os\nprint('visible', os.environ['CUDA_VISIBLE_DEVICES'])\n"
    assert run(shell, f"%%vrungpu --gpus 2 --out h\n{code}").success
    assert "visible 0,1" in capsys.readouterr().out
    assert api.task(shell.user_ns["h"].task_id)["gpu_ids"] == [0, 1]


def test_cpu_flag_runs_on_a_cpu_slot(
    shell: InteractiveShell, magics: VrunGPUMagics, api: Api
) -> None:
    assert run(shell, "%%vrungpu --cpu --out h\nprint('on cpu')\n").success
    handle = shell.user_ns["h"]
    assert api.task(handle.task_id)["device"] == "cpu"


def test_dir_uploads_the_folder_without_ignored_files(
    shell: InteractiveShell, magics: VrunGPUMagics, tmp_path: Path, capsys: Any
) -> None:
    project = tmp_path / "proj"
    (project / "data").mkdir(parents=True)
    (project / "pkg").mkdir()
    (project / "train.py").write_text(
        "import os\nfrom pkg.helper import VALUE\nprint('value', VALUE)\n"
        "for root, _, files in os.walk('.'):\n"
        "    for f in files:\n"
        "        print('file', os.path.join(root, f)[2:])\n"
    )
    (project / "pkg" / "helper.py").write_text("VALUE = 7\n")
    (project / "data" / "big.bin").write_bytes(b"x" * 1000)
    (project / "weights.ckpt").write_text("old")
    (project / "notes.txt").write_text("kept")
    (project / ".vrungpuignore").write_text("# local only\ndata/\n*.ckpt\n")
    result = run(shell, f"%vrungpu --dir {project} --entry train.py --out h")
    assert result.success, result.error_in_exec
    out = capsys.readouterr().out
    assert "Uploading the project" in out and "value 7" in out
    assert "file notes.txt" in out and "file pkg/helper.py" in out
    assert "big.bin" not in out and "weights.ckpt" not in out
    listed = {f["path"] for f in shell.user_ns["h"].files()}
    assert {"train.py", "notes.txt", "pkg/helper.py"} <= listed
    assert not any(p.startswith("data/") or p.endswith(".ckpt") for p in listed)


def test_dir_falls_back_to_gitignore_and_always_leaves_out_git_and_venvs(
    shell: InteractiveShell, magics: VrunGPUMagics, tmp_path: Path
) -> None:
    project = tmp_path / "proj"
    files = {
        "main.py": "print('ran')\n",
        "keep.txt": "kept",
        "run.log": "ignored by .gitignore",
        "secret/key.pem": "ignored by .gitignore",
        ".gitignore": "# no .vrungpuignore here: this file is read instead\n*.log\nsecret/\n",
        ".git/config": "[core]",
        ".venv/bin/activate": "venv",
        "venv/lib/site.py": "venv",
        "pkg/__pycache__/mod.cpython-311.pyc": "bytecode",
        "pkg/mod.py": "X = 1\n",
    }
    for rel, text in files.items():
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(text)
    result = run(shell, f"%vrungpu --dir {project} --out h")
    assert result.success, result.error_in_exec
    listed = {f["path"] for f in shell.user_ns["h"].files()}
    uploaded = {"main.py", "keep.txt", ".gitignore", "pkg/mod.py"}
    assert uploaded <= listed
    assert not listed & (set(files) - uploaded), listed


def test_big_folder_upload_prints_progress(
    shell: InteractiveShell, magics: VrunGPUMagics, tmp_path: Path, capsys: Any
) -> None:
    (tmp_path / "main.py").write_text("import os\nprint('size', os.path.getsize('blob.bin'))\n")
    (tmp_path / "blob.bin").write_bytes(os.urandom(3 * 1024 * 1024))  # does not compress
    shell.run_line_magic("vrungpu", f"--dir {tmp_path}")
    out = capsys.readouterr().out
    steps = [int(s) for s in re.findall(r"Uploading the project: (\d+)% of 3\.0 MB", out)]
    assert steps[0] == 0 and steps[-1] == 100 and steps == sorted(set(steps)) and len(steps) >= 3
    assert f"size {3 * 1024 * 1024}" in out


def test_cell_magic_runs_a_folder_when_the_cell_has_only_comments(
    shell: InteractiveShell, magics: VrunGPUMagics, tmp_path: Path, capsys: Any
) -> None:
    (tmp_path / "main.py").write_text("print('from main.py')\n")
    assert run(shell, f"%%vrungpu --dir {tmp_path}\n# main.py is the entry point\n").success
    assert "from main.py" in capsys.readouterr().out


def test_async_returns_a_handle(
    shell: InteractiveShell, magics: VrunGPUMagics, tmp_path: Path, capsys: Any
) -> None:
    code = "import time\ntime.sleep(1)\nopen('out.txt', 'w').write('artifact')\nprint('bg done')\n"
    result = run(shell, f"%%vrungpu --async --name bg\n{code}")
    handle = result.result
    assert isinstance(handle, TaskHandle) and handle.status in ("pending", "queued", "running")
    assert "runs in the background" in capsys.readouterr().out
    assert handle.result(timeout=30)["status"] == "completed"
    assert "bg done" in handle.logs()
    assert "out.txt" in {f["path"] for f in handle.files()}
    assert handle.download("out.txt", tmp_path).read_text() == "artifact"
    assert "completed" in repr(handle)


def test_async_handle_cancel_and_failed_result(
    shell: InteractiveShell, magics: VrunGPUMagics, api: Api
) -> None:
    handle = run(shell, f"%%vrungpu --async\n{SLOW_JOB}").result
    api.wait_status(handle.task_id, "running")
    assert handle.cancel()["status"] == "cancelled"
    with pytest.raises(TaskCancelledError):
        handle.result(timeout=10)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("%%vrungpu --gpu 0 --cpu\nprint(1)", "not both"),
        ("%%vrungpu --gpus 0\nprint(1)", "--gpus"),
        ("%%vrungpu --timeout -1\nprint(1)", "--timeout"),
        ("%%vrungpu --env NOEQUALS\nprint(1)", "KEY=VALUE"),
        ("%%vrungpu --bogus\nprint(1)", "unrecognized"),
        ("%%vrungpu --gpu one\nprint(1)", "invalid int"),
        ("%%vrungpu --entry x.py\nprint(1)", "--dir"),
        ("%vrungpu --dir /no/such/folder", "no such folder"),
        ("%vrungpu --dir .. --entry no_such_entry.py", "not a file"),
        ("%%vrungpu --out 1x\nprint(1)", "variable name"),
        ("%%vrungpu\n# only a comment\n", "nothing to run"),
        ("%vrungpu frobnicate", "unknown command"),
        ("%vrungpu logs", "required"),
        ("%vrungpu attach no-such-task", "HTTP 404"),
        ("%vrungpu cancel no-such-task", "HTTP 404"),
        ("%%vrungpu --gpu 7\nprint(1)", "HTTP 400"),
    ],
)
def test_mistakes_are_one_line_usage_errors(
    shell: InteractiveShell, magics: VrunGPUMagics, source: str, expected: str
) -> None:
    exc = error_of(run(shell, source))
    assert isinstance(exc, UsageError), exc
    assert expected in str(exc) and "\n" not in str(exc)


def test_dir_with_code_in_the_cell_is_refused(
    shell: InteractiveShell, magics: VrunGPUMagics, tmp_path: Path
) -> None:
    (tmp_path / "main.py").write_text("print(1)\n")
    exc = error_of(run(shell, f"%%vrungpu --dir {tmp_path}\nprint('cell code')\n"))
    assert isinstance(exc, UsageError) and "leave it empty" in str(exc)


# -- commands ------------------------------------------------------------------------------------


def test_tasks_logs_and_cancel(
    shell: InteractiveShell, magics: VrunGPUMagics, api: Api, capsys: Any
) -> None:
    done = api.submit("import sys\nprint('out line')\nprint('err line', file=sys.stderr)\n")
    api.wait_status(done, "completed")
    slow = api.submit(SLOW_JOB, name="slowpoke")
    api.wait_status(slow, "running")
    table = shell.run_line_magic("vrungpu", "tasks")
    text, page = repr(table), table._repr_html_()
    assert done in text and slow in text and "slowpoke" in text and "running" in text
    assert f"<td>{slow}</td>" in page
    running = shell.run_line_magic("vrungpu", "tasks --status running")
    assert [t["task_id"] for t in running] == [slow]
    capsys.readouterr()
    shell.run_line_magic("vrungpu", f"logs {done}")
    out, err = capsys.readouterr()
    assert out == "out line\n" and err == "err line\n"
    shell.run_line_magic("vrungpu", f"logs {done} --stream stderr")
    assert capsys.readouterr() == ("", "err line\n")
    shell.run_line_magic("vrungpu", f"logs {done} --stream stdout --tail 1")
    assert capsys.readouterr() == ("out line\n", "")
    shell.run_line_magic("vrungpu", f"cancel {slow}")
    assert f"Cancelled task {slow}" in capsys.readouterr().out
    assert api.task(slow)["status"] == "cancelled"
    with pytest.raises(UsageError, match="already"):
        shell.run_line_magic("vrungpu", f"cancel {slow}")


def test_attach_replays_the_log_and_fails_like_the_task(
    shell: InteractiveShell, magics: VrunGPUMagics, api: Api, capsys: Any
) -> None:
    task_id = api.submit("for i in range(3):\n    print('line', i)\nraise SystemExit(3)\n")
    api.wait_status(task_id, "failed")
    exc = error_of(run(shell, f"%vrungpu attach {task_id}"))
    assert isinstance(exc, TaskFailedError) and "return code 3" in str(exc)
    out = capsys.readouterr().out
    assert "line 0\nline 1\nline 2\n" in out


def test_attach_async_returns_a_handle_while_the_task_runs(
    shell: InteractiveShell, magics: VrunGPUMagics, api: Api, gate: Gate, capsys: Any
) -> None:
    task_id = api.submit("print('before', flush=True)\n" + gate.code + "print('after')\n")
    api.wait_status(task_id, "running")
    result = run(shell, f"%vrungpu attach {task_id} --async --out h")
    assert result.success, result.error_in_exec
    handle = shell.user_ns["h"]
    assert isinstance(handle, TaskHandle) and handle is result.result
    assert handle.task_id == task_id and handle.status == "running"
    assert f"Task {task_id} runs in the background" in capsys.readouterr().out
    gate.open()
    assert handle.result(timeout=30)["status"] == "completed"
    assert handle.logs() == "before\nafter\n"


def test_gpus_shows_each_gpu_and_its_task(
    shell: InteractiveShell, magics: VrunGPUMagics, api: Api, capsys: Any
) -> None:
    task_id = api.submit(SLOW_JOB, gpu_id=1)
    api.wait_status(task_id, "running")
    shell.run_line_magic("vrungpu", "gpus")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("GPU 0") and lines[0].endswith("free")
    assert lines[1].startswith("GPU 1") and lines[1].endswith(f"task {task_id}")
    api.post(f"/task/{task_id}/cancel")


def test_models_lists_the_registry(
    shell: InteractiveShell, magics: VrunGPUMagics, api: Api
) -> None:
    assert repr(shell.run_line_magic("vrungpu", "models")) == "No models registered."
    model = register_plain(api, name="magic-listed")
    try:
        table = shell.run_line_magic("vrungpu", "models")
        text, page = repr(table), table._repr_html_()
        assert model["model_id"] in text and "magic-listed" in text and "ready" in text
        assert f"<td>{model['model_id']}</td>" in page
    finally:
        assert api.delete(f"/model/{model['model_id']}").status_code == 200


def test_help(shell: InteractiveShell, magics: VrunGPUMagics, capsys: Any) -> None:
    shell.run_line_magic("vrungpu", "help")
    assert "%vrungpu attach ID" in capsys.readouterr().out
    shell.run_line_magic("vrungpu", "--help")
    assert "--entry FILE" in capsys.readouterr().out


# -- awaited cells -------------------------------------------------------------------------------


def test_magic_call_recognises_runs_and_attach_only() -> None:
    cell = "get_ipython().run_cell_magic('vrungpu', '--gpu 1', 'print(1)\\n')"
    assert _magic_call(cell) == ("--gpu 1", "print(1)\n")
    assert _magic_call("get_ipython().run_line_magic('vrungpu', 'attach abc')") == (
        "attach abc",
        None,
    )
    assert _magic_call("get_ipython().run_line_magic('vrungpu', '--dir x')") == ("--dir x", None)
    assert _magic_call("get_ipython().run_line_magic('vrungpu', 'tasks')") is None
    assert _magic_call("get_ipython().run_cell_magic('time', '', 'x')") is None
    assert _magic_call("x = get_ipython().run_line_magic('vrungpu', 'attach abc')") is None


def test_cells_are_not_rewritten_outside_a_kernel(
    shell: InteractiveShell, magics: VrunGPUMagics
) -> None:
    magics.widgets = "on"
    rewriters = [t for t in shell.input_transformers_post if isinstance(t, _AwaitRewriter)]
    assert len(rewriters) == 1
    source = "%%vrungpu\nprint(1)\n"
    assert "await" not in shell.transform_cell(source)

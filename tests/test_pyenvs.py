"""Per-job environments (``requirements``): built with uv offline from a local folder of wheels
the test writes, cached, built once for concurrent jobs, failing with the installer's line,
evicted least recently used first; and the requirement rules that need no gateway."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import Api, Gate, GatewayProcess, wait_for
from vrungpu_gateway.engine.pyenvs import (
    last_error_line,
    normalize,
    parse_requirements_text,
    requirement_name,
    validate_requirements,
)
from vrungpu_gateway.errors import InvalidRequest

PKG = "vrtestpkg"  # a name no index has: the base environment lacks it
USES_PKG = f"import sys, {PKG}\nprint('value', {PKG}.VALUE)\nprint('prefix', sys.prefix)\n"
BUILD_LINE = "vrungpu: building environment"
CACHED_LINE = "vrungpu: using the cached environment"


def write_wheel(folder: Path, name: str, version: str, code: str) -> Path:
    """A pure-Python wheel, written with zipfile (no build tool, no network)."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": code,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = hashlib.sha256(text.encode()).digest()
        encoded = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        record.append(f"{path},sha256={encoded},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


BACKEND = """
import os, time, zipfile

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
{before}
    name = "{name}-1.0-py3-none-any.whl"
    dist = "{name}-1.0.dist-info"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as archive:
        archive.writestr("{name}/__init__.py", "VALUE = {value!r}\\n")
        archive.writestr(dist + "/METADATA", "Metadata-Version: 2.1\\nName: {name}\\n"
                         "Version: 1.0\\n")
        archive.writestr(dist + "/WHEEL", "Wheel-Version: 1.0\\nRoot-Is-Purelib: true\\n"
                         "Tag: py3-none-any\\n")
        archive.writestr(dist + "/RECORD", "")
    return name
"""


def source_project(folder: Path, name: str, value: str, before: str) -> str:
    """A local source project (its build backend in it: nothing to download) whose build
    runs the lines ``before`` (indented for the function) first; a requirement for it."""
    folder.mkdir()
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
        f'[project]\nname = "{name}"\nversion = "1.0"\n'
    )
    (folder / "backend.py").write_text(BACKEND.format(before=before, name=name, value=value))
    return f"{name} @ {folder.as_uri()}"


def gated_project(folder: Path, gate: Gate) -> str:
    """A local source project whose build waits for ``gate``: a requirement for it."""
    wait = f"    while not os.path.exists({str(gate.path)!r}):  # the test lets the build go on\n"
    return source_project(folder, "gatedpkg", "gated", wait + "        time.sleep(0.02)")


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    folder = tmp_path / "wheels"
    folder.mkdir()
    write_wheel(folder, PKG, "1.0", "VALUE = 42\n")
    write_wheel(folder, PKG, "2.0", "VALUE = 2\n")
    return folder


@pytest.fixture
def envs_gateway(
    start_gateway: Callable[..., GatewayProcess], wheels: Path, tmp_path: Path
) -> Callable[..., GatewayProcess]:
    """Gateways whose uv works offline: wheels from the test's folder, a cache of its own."""

    def start(*, extra: tuple[str, ...] = (), **kwargs: Any) -> GatewayProcess:
        env = {
            "UV_OFFLINE": "1",
            "UV_FIND_LINKS": str(wheels),
            "UV_CACHE_DIR": str(tmp_path / "uv-cache"),
            "UV_NO_CONFIG": "1",
        }
        return start_gateway(gpus="none", env=env, extra=["--cpu-slots", "3", *extra], **kwargs)

    return start


def run(api: Api, code: str, requirements: list[str] | None, **fields: Any) -> dict[str, Any]:
    body = {"code": code, **fields}
    if requirements is not None:
        body["requirements"] = requirements
    res = api.post("/run/async", json=body)
    assert res.status_code == 202, res.text
    return api.wait_status(res.json()["task_id"], "completed", "failed", "cancelled", timeout_s=180)


def builds(gw: GatewayProcess) -> list[str]:
    path = gw.data_dir / "envs" / "builds.log"
    return path.read_text().splitlines() if path.exists() else []


def env_dirs(gw: GatewayProcess) -> set[str]:
    return {p.parent.name for p in (gw.data_dir / "envs").glob("*/vrungpu-env.json")}


def test_a_job_imports_a_package_of_its_requirements_and_the_next_reuses_them(
    envs_gateway: Callable[..., GatewayProcess],
) -> None:
    gw = envs_gateway()
    plain = run(gw.api, USES_PKG, None)
    assert plain["status"] == "failed" and "ModuleNotFoundError" in plain["error"]

    first = run(gw.api, USES_PKG, [f"{PKG}==1.0"])
    assert first["status"] == "completed", first
    assert "value 42" in first["stdout"]
    (key,) = env_dirs(gw)
    assert f"prefix {gw.data_dir.resolve() / 'envs' / key}" in first["stdout"]
    assert BUILD_LINE in first["stderr"] and first["progress_message"] is None

    # torch is the gateway's, shared: asking for it changes nothing (same environment)
    second = run(gw.api, USES_PKG + "import torch\n", [f"{PKG}==1.0", "torch>=1"])
    assert second["status"] == "completed", second
    assert "value 42" in second["stdout"]
    assert CACHED_LINE in second["stderr"] and BUILD_LINE not in second["stderr"]
    assert "'torch>=1' not installed: the gateway's torch" in second["stderr"]
    assert env_dirs(gw) == {key} and len(builds(gw)) == 1

    other = run(gw.api, USES_PKG, [f"{PKG}==2.0"])  # another set: another environment
    assert "value 2" in other["stdout"] and len(env_dirs(gw)) == 2


def test_a_bad_requirement_fails_the_task_with_the_installers_line(
    envs_gateway: Callable[..., GatewayProcess],
) -> None:
    gw = envs_gateway()
    task = run(gw.api, "print('never')", ["nosuchpkg-vrungpu==1.0"])
    assert task["status"] == "failed" and task["failure_reason"] == "spawn_error"
    assert task["error"].startswith("installing requirements failed: ")
    assert "nosuchpkg-vrungpu" in task["error"] and "\n" not in task["error"]
    assert "never" not in task["stdout"] and "nosuchpkg-vrungpu" in task["stderr"]
    assert env_dirs(gw) == set() and len(builds(gw)) == 1
    assert not [p for p in (gw.data_dir / "envs").iterdir() if len(p.name) == 32]


def test_concurrent_jobs_build_once_and_a_cancel_during_the_build_ends_only_its_task(
    envs_gateway: Callable[..., GatewayProcess], tmp_path: Path, make_gate: Callable[[], Gate]
) -> None:
    gw, gate = envs_gateway(), make_gate()
    requirements = [gated_project(tmp_path / "gatedpkg", gate), PKG]
    code = "import gatedpkg, vrtestpkg\nprint(gatedpkg.VALUE, vrtestpkg.VALUE)\n"
    ids = [gw.api.submit(code, requirements=requirements) for _ in range(3)]
    phase = "installing requirements (2 packages)"
    for task_id in ids:  # all three wait on the one build
        wait_for(lambda: gw.api.task(task_id)["progress_message"] == phase, 60, what=phase)  # noqa: B023
    cancelled = gw.api.post(f"/task/{ids[2]}/cancel").json()
    assert cancelled["status"] == "cancelled"
    gate.open()
    for task_id in ids[:2]:
        task = gw.api.wait_status(task_id, "completed", "failed", timeout_s=180)
        assert task["status"] == "completed", task
        assert "gated 2" in task["stdout"] and BUILD_LINE in task["stderr"]
    assert len(builds(gw)) == 1 and len(env_dirs(gw)) == 1
    assert gw.api.task(ids[2])["error"] == "Cancelled by request"


def test_the_least_recently_used_unused_environment_goes_first_and_one_in_use_stays(
    envs_gateway: Callable[..., GatewayProcess], tmp_path: Path, gate: Gate
) -> None:
    data = tmp_path / "evict"
    gw = envs_gateway(data_dir=data)
    run(gw.api, USES_PKG, [f"{PKG}==1.0"])
    (key_a,) = env_dirs(gw)
    run(gw.api, USES_PKG, [f"{PKG}==2.0"])
    (key_b,) = env_dirs(gw) - {key_a}
    assert run(gw.api, USES_PKG, [f"{PKG}==1.0"])["status"] == "completed"  # b: least recent
    sizes = [json.loads((data / "envs" / k / "vrungpu-env.json").read_text()) for k in env_dirs(gw)]
    one_fits = max(s["size_bytes"] for s in sizes) * 1.5 / 2**20
    gw.stop()

    gw = envs_gateway(data_dir=data, extra=("--env-cache-mb", str(one_fits)))
    assert env_dirs(gw) == {key_a}  # over the cap at start: b went
    running = gw.api.submit(gate.code + USES_PKG, requirements=[f"{PKG}>=2"])

    def only_c() -> set[str]:
        found = env_dirs(gw)
        return found if key_a not in found else set()

    (key_c,) = wait_for(only_c, 120, what="a evicted for c")
    assert gw.api.task(running)["status"] == "running"
    assert key_c not in (key_a, key_b)  # a (unused) evicted for c, which is in use
    gate.open()
    assert gw.api.wait_status(running, "completed", timeout_s=120)["status"] == "completed"
    assert env_dirs(gw) == {key_c}  # c is within the cap alone: kept for reuse


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("numpy", "requirements must be a list of strings"),
        (["numpy", 3], "requirements must be a list of strings"),
        (["x"] * 201, "at most 200 entries"),
        (["a" * 501], "longer than 500 characters"),
        (["numpy\nscipy"], "NUL or line break"),
        (["  "], "empty entry"),
        (["-r /etc/passwd"], "installer options such as '-r' are refused"),
        (["--index-url=http://x"], "installer options"),
    ],
)
def test_bad_requirements_are_refused_with_one_line(value: Any, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        validate_requirements(value)


def test_requirement_rules() -> None:
    assert requirement_name("Torch_Vision[extra] >= 1; python_version > '3'") == "torch-vision"
    assert requirement_name("pkg @ file:///tmp/pkg") == "pkg"
    assert requirement_name("./local/dir") is None and requirement_name("/abs/dir") is None
    assert normalize("  My.Pkg   ==  1.0 ") == "my-pkg == 1.0"
    text = "# comment\nnumpy==2  # pinned\n\n  scipy\n"
    assert parse_requirements_text(text, where="requirements.txt") == ["numpy==2", "scipy"]
    out = "Using Python\nerror: No solution found\n  cause: Because nope was not found\n\nhint: x\n"
    assert last_error_line(out) == "Because nope was not found"


def test_the_api_answers_400_for_bad_requirements(
    envs_gateway: Callable[..., GatewayProcess],
) -> None:
    api = envs_gateway().api
    res = api.post("/run/async", json={"code": "print(1)", "requirements": ["a\nb"]})
    assert res.status_code == 400 and "line break" in res.json()["detail"]
    # uv would expand ${VAR} from its own environment (index credentials, proxies)
    leak = {"code": "print(1)", "requirements": ["x @ file:///${UV_INDEX_URL}"]}
    res = api.post("/run/async", json=leak)
    assert res.status_code == 400 and "($)" in res.json()["detail"]
    bad_zip = io.BytesIO()
    with zipfile.ZipFile(bad_zip, "w") as archive:
        archive.writestr("main.py", "print(1)")
        archive.writestr("requirements.txt", "--extra-index-url http://x\nnumpy\n")
    res = api.post("/run/project", files={"file": ("p.zip", bad_zip.getvalue())})
    assert res.status_code == 400 and "requirements.txt" in res.json()["detail"]


def test_a_projects_requirements_txt_is_used_unless_the_request_gives_some(
    envs_gateway: Callable[..., GatewayProcess],
) -> None:
    api = envs_gateway().api
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("proj/main.py", USES_PKG)
        archive.writestr("proj/requirements.txt", f"# pinned\n{PKG}==2.0\n")
    res = api.post("/run/project", files={"file": ("p.zip", buf.getvalue())})
    assert res.status_code == 202, res.text
    task = api.wait_status(res.json()["task_id"], "completed", "failed", timeout_s=180)
    assert "value 2" in task["stdout"], task
    fields = {"requirements": f"{PKG}==1.0"}  # a form field: requirements.txt text
    res = api.post("/run/project", files={"file": ("p.zip", buf.getvalue())}, data=fields)
    task = api.wait_status(res.json()["task_id"], "completed", "failed", timeout_s=180)
    assert "value 42" in task["stdout"], task


def test_the_magic_sends_a_requirements_files_lines(tmp_path: Path) -> None:
    from IPython.core.error import UsageError

    from vrungpu_magic.magic import RUN_PARSER, _parse, _run_request

    path = tmp_path / "requirements.txt"
    path.write_text(f"# for the job\n{PKG}==1.0  # pinned\n\nnumpy\n")
    args = _parse(RUN_PARSER, ["--cpu", "--requirements", str(path)])
    assert _run_request(args, "print(1)").options["requirements"] == [f"{PKG}==1.0", "numpy"]
    with pytest.raises(UsageError, match="--requirements"):
        _run_request(_parse(RUN_PARSER, ["--requirements", str(tmp_path / "no")]), "print(1)")

"""Packaging: `pip install vrungpu` is the client side, `vrungpu[gateway]` adds the gateway.

The slow tests build the wheel from this checkout once, install it into a fresh virtual
environment without extras (its dependencies come from the package index), and check that the
client, the `vrungpu` command, the magic, the JupyterLab sidebar and its server extension work
there while the gateway's dependencies are absent and `vrungpu-gateway` says what to install.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = "Scripts" if os.name == "nt" else "bin"
# The gateway's own dependencies, as import names: none may be in the client-side install.
GATEWAY_ONLY = (
    "sqlalchemy",
    "pynvml",
    "tornado",
    "multipart",
    "zmq",
    "jupyter_client",
    "ipykernel",
    "prometheus_client",
    "uv",
)
LABEXT = "share/jupyter/labextensions/vrungpu-labext"


def _run(cmd: list[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess[str]:
    # never in the checkout: `python -c` puts the working directory first on sys.path
    kwargs.setdefault("cwd", tempfile.gettempdir())
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (
        f"{done.args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    )
    return done.stdout


def _name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9_.-]+)", requirement)
    assert match, requirement
    return match.group(1).lower()


def _load_wheel_build() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(
        "wheel_build", REPO / "labextension" / "wheel_build.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the build function that keeps development builds out of wheels (fast) ----------------------


def _build_dir(root: Path, *, licenses: bool = True, maps: bool = False, log: bool = False) -> Path:
    static = root / "static"
    static.mkdir(parents=True)
    (root / "package.json").write_text("{}")
    (static / "remoteEntry.1.js").write_text("")
    if licenses:
        (static / "third-party-licenses.json").write_text("{}")
    if maps:
        (static / "remoteEntry.1.js.map").write_text("{}")
    if log:
        (root / "build_log.json").write_text("[]")
    return root


def test_production_build_is_told_from_a_development_one(tmp_path: Path) -> None:
    wb = _load_wheel_build()
    assert wb.is_production_build(_build_dir(tmp_path / "prod"))
    assert not wb.is_production_build(_build_dir(tmp_path / "maps", maps=True))
    assert not wb.is_production_build(_build_dir(tmp_path / "log", log=True))
    assert not wb.is_production_build(_build_dir(tmp_path / "nolic", licenses=False))


@pytest.mark.parametrize(
    ("kind", "version", "forced"),
    [
        ("dev", "standard", True),  # a wheel or sdist never packs a development build
        ("prod", "standard", False),  # an up-to-date production build (the sdist's) is kept
        ("missing", "standard", False),  # npm_builder builds a missing one anyway
        ("dev", "editable", False),  # an editable install keeps what the developer built
    ],
)
def test_wheel_build_forces_a_production_rebuild_over_a_development_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, version: str, forced: bool
) -> None:
    calls: list[tuple[str, str, dict]] = []
    fake = types.ModuleType("hatch_jupyter_builder")
    fake.npm_builder = lambda target, ver, **kw: calls.append((target, ver, kw))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "hatch_jupyter_builder", fake)
    build_dir = tmp_path / "labextension"
    if kind != "missing":
        _build_dir(build_dir, licenses=kind == "prod", maps=kind == "dev", log=kind == "dev")
    kwargs = {"path": "labextension", "build_cmd": "build:prod", "build_dir": str(build_dir)}
    _load_wheel_build().npm_builder("wheel", version, **kwargs)
    [(target, ver, passed)] = calls
    assert (target, ver) == ("wheel", version)
    assert passed.get("force", False) is forced
    assert passed["build_cmd"] == "build:prod"


def test_gateway_command_without_its_dependencies_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import vrungpu_gateway.__main__ as entry

    monkeypatch.delitem(sys.modules, "vrungpu_gateway.cli", raising=False)
    monkeypatch.setitem(sys.modules, "tornado", None)  # as if tornado were not installed
    with pytest.raises(SystemExit) as exc:
        entry.main()
    assert exc.value.code == (
        "vrungpu-gateway: the gateway needs 'tornado', which is not installed; "
        "install vrungpu[gateway]: pip install 'vrungpu[gateway]'"
    )


# -- the wheel, installed into a fresh venv without extras (slow: ~1-2 min) ---------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout, built once, as `pip wheel .` builds it (isolated build env;
    jlpm rebuilds vrungpu_magic/labextension in place when it is stale or a development build)."""
    out = tmp_path_factory.mktemp("wheel")
    _ok(_run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)]))
    [built] = out.glob("vrungpu-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv (no system site-packages) with `pip install <wheel>`, no extras."""
    root = tmp_path_factory.mktemp("venv")
    _ok(_run([sys.executable, "-m", "venv", str(root)]))
    _ok(_run([str(root / BIN / "python"), "-m", "pip", "install", "-q", str(wheel)], timeout=600))
    yield root


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VRUNGPU_", "JUPYTER_"))}
    env.update(
        IPYTHONDIR=str(tmp / "ipython"), VRUNGPU_CONFIG=str(tmp / "vrungpu.json"), NO_COLOR="1"
    )
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


@pytest.mark.slow
def test_wheel_holds_the_production_sidebar_and_the_client_side_requirements(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        scripts = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt")))
    labext = [n.split(LABEXT + "/", 1)[1] for n in names if LABEXT + "/" in n]
    assert "package.json" in labext and "install.json" in labext
    assert "static/third-party-licenses.json" in labext, labext
    assert any(n.startswith("static/remoteEntry.") for n in labext), labext
    assert not [n for n in labext if n.endswith(".map") or n == "build_log.json"], labext
    assert any(n.endswith("etc/jupyter/jupyter_server_config.d/vrungpu.json") for n in names)
    # the sidebar ships once, as shared data (not a second copy inside the package)
    assert not [n for n in names if n.startswith("vrungpu_magic/labextension/")]

    requires = [line.split(":", 1)[1] for line in meta.splitlines() if "Requires-Dist:" in line]
    base = {_name(r) for r in requires if ";" not in r}
    assert base >= {"requests", "websocket-client", "click", "ipython"}, base
    assert not base & {"sqlalchemy", "tornado", "nvidia-ml-py", "python-multipart", "pyzmq"}
    gateway = {_name(r) for r in requires if "extra == 'gateway'" in r}
    assert gateway >= {"sqlalchemy", "tornado", "nvidia-ml-py", "python-multipart"}, gateway
    assert b"vrungpu = vrungpu_magic.cli:main" in scripts
    assert b"vrungpu-gateway = vrungpu_gateway.__main__:main" in scripts


@pytest.mark.slow
def test_client_side_install_has_no_gateway_dependencies(venv: Path, tmp_path: Path) -> None:
    probe = (
        "import importlib.util, json, sys\n"
        "import vrungpu_magic, vrungpu_magic.client, vrungpu_magic.magic, vrungpu_magic.cli\n"
        f"names = {GATEWAY_ONLY!r}\n"
        "print(json.dumps({'file': vrungpu_magic.__file__,\n"
        "  'installed': [m for m in names if importlib.util.find_spec(m)],\n"
        "  'imported': sorted(m for m in sys.modules if m.split('.')[0] in names)}))\n"
    )
    out = json.loads(_ok(_run([str(venv / BIN / "python"), "-c", probe], env=_env(tmp_path))))
    assert out["file"].startswith(str(venv)), out
    assert out["installed"] == [] and out["imported"] == [], out


@pytest.mark.slow
def test_magic_loads_in_ipython(venv: Path, tmp_path: Path) -> None:
    cell = "%load_ext vrungpu_magic\n%vrungpu help"
    cmd = [str(venv / BIN / "ipython"), "--quick", "--no-banner", "--colors=nocolor", "-c", cell]
    out = _ok(_run(cmd, env=_env(tmp_path)))
    assert "%vrungpu connect URL" in out, out


@pytest.mark.slow
def test_vrungpu_command_runs(venv: Path, tmp_path: Path) -> None:
    out = _ok(_run([str(venv / BIN / "vrungpu"), "--help"], env=_env(tmp_path)))
    assert "Usage: vrungpu" in out
    for command in ("run", "submit", "logs", "status", "cancel", "gpus", "connect"):
        assert f"  {command} " in out or f"  {command}\n" in out, (command, out)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["script", "module"])
def test_gateway_command_says_to_install_the_gateway_extra(
    venv: Path, tmp_path: Path, how: str
) -> None:
    python = str(venv / BIN / "python")
    cmd = (
        [str(venv / BIN / "vrungpu-gateway")]
        if how == "script"
        else [python, "-m", "vrungpu_gateway"]
    )
    done = _run(cmd, env=_env(tmp_path))
    assert done.returncode != 0
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "install vrungpu[gateway]" in lines[0], done.stderr


@pytest.mark.slow
def test_sidebar_and_server_extension_are_installed_for_jupyter(venv: Path, tmp_path: Path) -> None:
    labext = venv / LABEXT
    static = {p.name for p in (labext / "static").iterdir()}
    assert "third-party-licenses.json" in static and not [n for n in static if n.endswith(".map")]
    config = venv / "etc/jupyter/jupyter_server_config.d/vrungpu.json"
    assert json.loads(config.read_text()) == {
        "ServerApp": {"jpserver_extensions": {"vrungpu_magic": True}}
    }
    # JupyterLab is not a dependency (the sidebar is a plugin of the user's JupyterLab 4): this
    # test environment's JupyterLab reads the fresh venv's data dir, as its own would.
    jupyter = Path(sys.executable).parent / "jupyter"
    if importlib.util.find_spec("jupyterlab") is None or not jupyter.exists():
        pytest.skip("jupyterlab not installed in the test environment")
    env = _env(tmp_path, JUPYTER_PATH=str(venv / "share/jupyter"))
    done = _run([str(jupyter), "labextension", "list"], env=env, timeout=120)
    out = _ok(done) + done.stderr  # JupyterLab writes the listing to stderr
    section = out.split(str(venv / "share/jupyter/labextensions"), 1)
    assert len(section) == 2, out
    first = section[1].strip().splitlines()[0]
    assert "vrungpu-labext v" in first and "enabled" in first and "OK" in first, out
    # the server extension, as installed in the venv, imports under this environment's
    # jupyter_server and pulls in nothing of the gateway's
    site = next((venv / "lib").glob("python3*/site-packages"))
    probe = (
        "import json, sys\n"
        "import vrungpu_magic, vrungpu_magic.serverext as ext\n"
        "print(json.dumps({'file': vrungpu_magic.__file__,\n"
        "  'points': vrungpu_magic._jupyter_server_extension_points(),\n"
        "  'load': callable(getattr(ext, '_load_jupyter_server_extension', None)),\n"
        "  'gateway': sorted(m for m in sys.modules if m.split('.')[0] in\n"
        "    ('vrungpu_gateway', 'sqlalchemy', 'pynvml'))}))\n"
    )
    got = json.loads(
        _ok(_run([sys.executable, "-c", probe], env=_env(tmp_path, PYTHONPATH=str(site))))
    )
    assert got["file"].startswith(str(venv)), got
    assert got["points"] == [{"module": "vrungpu_magic.serverext"}] and got["load"], got
    assert got["gateway"] == [], got

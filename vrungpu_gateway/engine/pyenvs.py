"""Per-job Python environments: virtual environments built with uv on the gateway's interpreter.

A task that asks for ``requirements`` runs with the python of a venv under
``data/envs/<key>/``; ``key`` hashes the normalized requirements with the base interpreter's
path and version, so equal requests share one environment. The venv sees the base
interpreter's own site-packages through a ``.pth`` file (so torch and the rest stay shared)
and uv never resolves the packages listed in ``SHARED``. Builds run once per key however many
tasks ask at the same time (one future per key); their output goes to every waiting task's
log. Finished environments are kept, the least recently used ones (not in use by a live task)
removed while the cache is over its size cap. A build that ends half-way leaves no marker file
and is removed at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vrungpu_gateway.engine import containment, jobuser
from vrungpu_gateway.engine.environment import ALLOWED
from vrungpu_gateway.engine.jobuser import JobUser
from vrungpu_gateway.errors import InvalidRequest

log = logging.getLogger(__name__)

MAX_REQUIREMENTS = 200
MAX_REQUIREMENT_CHARS = 500
MAX_FILE_BYTES = 256 * 1024
REQUIREMENTS_FILE = "requirements.txt"
MARKER = "vrungpu-env.json"  # written last: an environment without it is incomplete
EXCLUDES = "vrungpu-excludes.txt"
BUILDS_LOG = "builds.log"  # one line per build started, for operators (and tests)
TASKS_DIR = ".tasks"  # each live task's requirements, so a restart can still build them
BUILD_TIMEOUT_S = 1800  # one installer command; a hung build fails the tasks that wait for it
# Never resolved by uv: the base interpreter's copy is used. A resolution that includes torch
# downloads a multi-GB CUDA build even where the base has a local one.
SHARED = frozenset({"torch", "torchvision", "torchaudio", "triton", "pytorch-triton"})
SHARED_PREFIXES = ("nvidia-",)
NAME_RE = re.compile(r"([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?=$|[\s\[(<>=!~;@,])")
ERROR_PREFIXES = ("error:", "cause:", "caused by:")
PROBE = (
    "import json, site, sys, importlib.metadata as m; print(json.dumps({'version': sys.version,"
    " 'site': site.getsitepackages(), 'packages': {d.metadata['Name']: d.version"
    " for d in m.distributions() if d.metadata['Name']}}))"
)
TOOL_ENV_PREFIXES = ("LC_", "UV_")
PROXY_VARS = frozenset({"http_proxy", "https_proxy", "no_proxy", "all_proxy"})

OutputSink = Callable[[bytes], None]


class EnvBuildError(Exception):
    """The environment could not be built; the message is one line for the task's error."""


# -- requirements: validation and reading -------------------------------------------------------
def canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str | None:
    """The project name a requirement asks for; None for a URL or a path."""
    match = NAME_RE.match(requirement.strip())
    if match is None or "/" in requirement.split("@")[0]:
        return None
    return canonical_name(match.group(1))


def normalize(requirement: str) -> str:
    text = " ".join(requirement.split())
    match = NAME_RE.match(text)
    return canonical_name(match.group(1)) + text[match.end(1) :] if match else text


def validate_requirements(value: Any, *, where: str = "requirements") -> list[str]:
    """A list of at most 200 requirement strings, each one line; options are refused."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"{where} must be a list of strings")
    if len(value) > MAX_REQUIREMENTS:
        raise InvalidRequest(f"{where}: at most {MAX_REQUIREMENTS} entries, got {len(value)}")
    clean = []
    for item in value:
        text = item.strip()
        if not text:
            raise InvalidRequest(f"{where}: empty entry")
        if len(text) > MAX_REQUIREMENT_CHARS:
            raise InvalidRequest(f"{where}: entry longer than {MAX_REQUIREMENT_CHARS} characters")
        if any(c in item for c in "\x00\n\r"):
            raise InvalidRequest(f"{where}: an entry holds a NUL or line break")
        if "$" in item:  # uv expands ${VAR} from its own environment (proxy, index secrets)
            raise InvalidRequest(f"{where}: {item!r}: environment variables ($) are not allowed")
        if text.startswith("-"):
            raise InvalidRequest(
                f"{where}: installer options such as {text.split()[0]!r} are refused"
            )
        clean.append(text)
    return clean


def parse_requirements_text(text: str, *, where: str) -> list[str]:
    """The requirements of a requirements.txt: comments and blank lines dropped."""
    lines = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return validate_requirements(lines, where=where)


def read_requirements_file(workspace: Path, entry_point: str) -> list[str] | None:
    """A project's requirements.txt, at its root or beside its entry point; None without one.
    Blocks (disk I/O)."""
    for folder in (workspace, (workspace / entry_point).parent):
        path = folder / REQUIREMENTS_FILE
        if path.is_file() and not path.is_symlink():
            if path.stat().st_size > MAX_FILE_BYTES:
                raise InvalidRequest(f"{REQUIREMENTS_FILE} is larger than {MAX_FILE_BYTES} bytes")
            text = path.read_text(encoding="utf-8", errors="replace")
            return parse_requirements_text(text, where=REQUIREMENTS_FILE)
    return None


def last_error_line(output: str) -> str:
    """The installer's last error line, without its decoration."""
    lines = [line.strip().lstrip("×╰─▶│ ").strip() for line in output.splitlines()]
    lines = [line for line in lines if line]
    for line in reversed(lines):
        for prefix in ERROR_PREFIXES:
            if line.lower().startswith(prefix):
                return line[len(prefix) :].strip()
    return lines[-1] if lines else "the installer failed without a message"


# -- the base interpreter and environment keys ---------------------------------------------------
@dataclass(frozen=True)
class BaseInterpreter:
    python: str
    version: str
    site_dirs: list[str]
    packages: dict[str, str]  # canonical name -> version

    @classmethod
    def probe(cls, python: str) -> BaseInterpreter:
        """Ask ``python`` for its version, site-packages and distributions (blocks)."""
        out = subprocess.run(
            [python, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True
        )
        data = json.loads(out.stdout)
        packages = {canonical_name(k): v for k, v in data["packages"].items()}
        return cls(python, data["version"], list(data["site"]), packages)

    def is_shared(self, name: str) -> bool:
        return name in SHARED or (name.startswith(SHARED_PREFIXES) and name in self.packages)

    def excludes(self) -> list[str]:
        return sorted(SHARED | {n for n in self.packages if n.startswith(SHARED_PREFIXES)})


def env_key(requirements: list[str], base: BaseInterpreter) -> str:
    blob = json.dumps(
        {"requirements": sorted(set(requirements)), "python": base.python, "version": base.version}
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]  # short: shebangs have a length limit


def keep_unshared(
    requirements: list[str], base: BaseInterpreter, on_output: OutputSink
) -> list[str]:
    """Requirements minus the shared packages the base provides (each dropped with a line);
    a shared package the base lacks is refused rather than downloaded."""
    kept = []
    for requirement in requirements:
        name = requirement_name(requirement)
        if name is None or not base.is_shared(name):
            kept.append(normalize(requirement))
        elif name in base.packages:
            on_output(
                f"vrungpu: {requirement!r} not installed: the gateway's {name} "
                f"{base.packages[name]} is shared with every job\n".encode()
            )
        else:
            raise EnvBuildError(
                f"{name} is not installed on the gateway, and per-job environments never "
                f"install it (ask the operator to add it to the gateway's environment)"
            )
    return sorted(set(kept))


# -- environments on disk ----------------------------------------------------------------------
@dataclass(frozen=True)
class Env:
    key: str
    path: Path

    @property
    def python(self) -> str:
        return str(self.path / "bin" / "python")

    def job_env(self, env: dict[str, str]) -> dict[str, str]:
        """A job's environment with this venv active (its bin first on PATH)."""
        path = env.get("PATH", os.defpath)
        return {**env, "VIRTUAL_ENV": str(self.path), "PATH": f"{self.path / 'bin'}:{path}"}


def tree_size(path: Path) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


@dataclass
class _Build:
    """One environment being built: its output so far, and the tasks that follow it."""

    future: asyncio.Future[Env]
    task: asyncio.Future[None] | None = None
    chunks: list[bytes] = field(default_factory=list)
    sinks: list[OutputSink] = field(default_factory=list)

    def emit(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        for sink in list(self.sinks):
            sink(chunk)

    def join(self, sink: OutputSink) -> None:
        for chunk in self.chunks:  # a late waiter sees the build from its start
            sink(chunk)
        self.sinks.append(sink)

    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", errors="replace")


class EnvCache:
    """The environments under ``root`` (``data/envs``): build, reuse, pin while in use, evict."""

    def __init__(
        self, *, root: Path, python: str, uv: str, max_bytes: int, builder: JobUser | None = None
    ) -> None:
        self.root = root
        self.builder = builder  # builds run as its uid for the environment (None: as we are)
        self.python = python
        self.uv = uv
        self.max_bytes = max_bytes
        self._base: BaseInterpreter | None = None
        self._builds: dict[str, _Build] = {}
        self._in_use: dict[str, str] = {}  # task id -> key of the environment it runs in
        self._lock = asyncio.Lock()  # between taking a ready environment and evicting it

    # -- per-task requirements (kept on disk so a restarted gateway still knows them) --------
    def _task_file(self, task_id: str) -> Path:
        return self.root / TASKS_DIR / f"{task_id}.json"

    def remember(self, *, task_id: str, requirements: list[str]) -> None:
        """Record what a new task asks for (blocks)."""
        path = self._task_file(task_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(requirements))

    def recall(self, task_id: str) -> list[str]:
        try:
            return list(json.loads(self._task_file(task_id).read_text()))
        except (OSError, ValueError):
            return []

    # -- the life of an environment around a task ----------------------------------------------
    async def acquire(
        self, *, task_id: str, on_output: OutputSink, on_phase: Callable[[str], None]
    ) -> Env | None:
        """The environment the task runs in, built now if need be; None: the base one.

        Raises ``EnvBuildError`` with the installer's error line when the build fails.
        """
        key, requirements = await self._key_of(task_id, on_output)
        if key is None:
            return None
        async with self._lock:
            self._in_use[task_id] = key
            ready = await asyncio.to_thread(self._touch, key)
        if ready:
            on_output(f"vrungpu: using the cached environment {key}\n".encode())
            return Env(key, self.root / key)
        build = self._builds.get(key)
        if build is None:
            build = self._builds[key] = _Build(asyncio.get_running_loop().create_future())
            build.task = asyncio.ensure_future(self._build(key, requirements, task_id, build))
        on_phase(f"installing requirements ({len(requirements)} packages)")
        build.join(on_output)
        try:
            return await asyncio.shield(build.future)
        finally:
            build.sinks.remove(on_output)

    async def pin(self, *, task_id: str) -> None:
        """Mark an adopted task's environment in use (it runs there already)."""
        with contextlib.suppress(EnvBuildError, OSError, ValueError):
            key, _ = await self._key_of(task_id, lambda _: None)
            if key is not None:
                self._in_use[task_id] = key

    async def release(self, *, task_id: str) -> None:
        """The task ended: forget its requirements; its environment may be evicted now."""
        key = self._in_use.pop(task_id, None)
        await asyncio.to_thread(self._task_file(task_id).unlink, missing_ok=True)
        if key is not None:
            await asyncio.to_thread(self._touch, key)
            await self.evict()

    async def _key_of(self, task_id: str, on_output: OutputSink) -> tuple[str | None, list[str]]:
        requirements = await asyncio.to_thread(self.recall, task_id)
        if not requirements:
            return None, []
        base = await self.base()
        kept = keep_unshared(requirements, base, on_output)
        return (env_key(kept, base) if kept else None), kept

    async def base(self) -> BaseInterpreter:
        if self._base is None:
            try:
                self._base = await asyncio.to_thread(BaseInterpreter.probe, self.python)
            except (OSError, ValueError, subprocess.SubprocessError) as exc:
                raise EnvBuildError(f"cannot inspect the interpreter {self.python}: {exc}") from exc
        return self._base

    def _touch(self, key: str) -> bool:
        """Mark an environment used now; whether it is complete."""
        try:
            os.utime(self.root / key / MARKER)
        except OSError:
            return False
        return True

    # -- building ---------------------------------------------------------------------------------
    async def _build(self, key: str, requirements: list[str], task_id: str, build: _Build) -> None:
        path = self.root / key
        started = time.monotonic()
        log.info("task %s: building environment %s (%d packages)", task_id, key, len(requirements))
        # a source build runs the package's own code: as an unprivileged uid of its own
        user = self.builder.for_task(f"env-{key}") if self.builder else None
        try:
            base = await self.base()
            await asyncio.to_thread(self._begin, path, task_id, requirements, user)
            build.emit(f"vrungpu: building environment {key}: {' '.join(requirements)}\n".encode())
            await self._tool(build, user, path, self.uv, "venv", "--python", base.python, str(path))
            await asyncio.to_thread(self._layer_on_base, path, base)
            excludes = str(path / EXCLUDES)
            install = ["pip", "install", "--python", str(path / "bin" / "python")]
            await self._tool(
                build, user, path, self.uv, *install, "--excludes", excludes, *requirements
            )
            await asyncio.to_thread(self._take_over, path, user)
            await asyncio.to_thread(self._complete, path, requirements, time.monotonic() - started)
        except BaseException as exc:
            if user is not None:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(_kill_builder, user)
            await asyncio.to_thread(shutil.rmtree, path, True)
            await asyncio.to_thread(shutil.rmtree, _cache_of(path), True)
            failure = exc if isinstance(exc, EnvBuildError) else EnvBuildError(f"build: {exc!r}")
            build.future.set_exception(failure)
            build.future.exception()  # retrieved: nobody may be waiting any more
            log.warning("task %s: environment %s not built: %s", task_id, key, failure)
            if not isinstance(exc, Exception):
                raise  # cancelled: the gateway stops
        else:
            build.future.set_result(Env(key, path))
            log.info("task %s: environment %s built", task_id, key)
        finally:
            self._builds.pop(key, None)
        await self.evict()

    async def _tool(self, build: _Build, user: JobUser | None, path: Path, *argv: str) -> None:
        """Run one installer command (as ``user``), its output to the build's followers."""
        env = tool_environment()
        if user is not None:  # its own HOME and uv cache: nothing shared with another build
            env = {
                **jobuser.environment(env, user, str(path)),
                "UV_CACHE_DIR": str(_cache_of(path)),
            }
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            env=env,
            start_new_session=True,
            user=user.uid if user else None,
            group=user.gid if user else None,
            extra_groups=[] if user else None,
        )
        assert proc.stdout is not None
        output = asyncio.ensure_future(_pump(proc.stdout, build))
        try:
            code: int | None = await asyncio.wait_for(proc.wait(), BUILD_TIMEOUT_S)
        except TimeoutError:
            code = None
        finally:  # timed out, or the gateway stops: leave no installer behind
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            if user is not None:  # nor what the package's code left running (holding our pipe)
                await asyncio.to_thread(_kill_builder, user)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(output, 5.0)
            output.cancel()
        if code is None:
            raise EnvBuildError(f"installing requirements took longer than {BUILD_TIMEOUT_S} s")
        if code != 0:
            raise EnvBuildError(f"installing requirements failed: {last_error_line(build.text())}")

    def _begin(
        self, path: Path, task_id: str, requirements: list[str], user: JobUser | None
    ) -> None:
        shutil.rmtree(path, ignore_errors=True)  # what an interrupted build left
        shutil.rmtree(_cache_of(path), ignore_errors=True)
        if user is not None:  # the builder's own folders, in ours (passable, not listable)
            self.root.chmod(0o711)
            for folder in (path, _cache_of(path)):
                folder.mkdir(mode=0o700)
                os.chown(folder, user.uid, user.gid)
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        with open(self.root / BUILDS_LOG, "a") as fh:
            fh.write(f"{stamp} {path.name} task {task_id} {len(requirements)} packages\n")

    def _layer_on_base(self, path: Path, base: BaseInterpreter) -> None:
        """The base interpreter's site-packages after the venv's own (``addsitedir`` also runs
        their .pth files); uv is told to leave the shared packages to them."""
        _write_readable(path / EXCLUDES, "".join(f"{name}\n" for name in base.excludes()))
        lines = "".join(f"import site; site.addsitedir({d!r})\n" for d in base.site_dirs)
        for site_packages in path.glob("lib/python*/site-packages"):
            _write_readable(site_packages / "_vrungpu_base.pth", lines)

    @staticmethod
    def _take_over(path: Path, user: JobUser | None) -> None:
        """The build ended: nothing of its uid runs any more, its cache goes, and the
        environment becomes ours, readable by every job and changeable by none."""
        if user is None:
            return
        _kill_builder(user)  # OSError when some survive: the build fails, nothing taken over
        shutil.rmtree(_cache_of(path), ignore_errors=True)
        me, group = os.getuid(), os.getgid()
        os.lchown(path, me, group)
        os.chmod(path, 0o755)
        for top, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                entry = os.path.join(top, name)
                os.lchown(entry, me, group)
                mode = os.lstat(entry).st_mode
                if not stat.S_ISLNK(mode):  # readable by all, writable by us alone, no set-id
                    searchable = 0o111 if stat.S_ISDIR(mode) else 0
                    os.chmod(entry, (stat.S_IMODE(mode) & 0o755) | 0o444 | searchable)

    def _complete(self, path: Path, requirements: list[str], build_s: float) -> None:
        info = {
            "requirements": requirements,
            "python": self.python,
            "built_at": datetime.now(UTC).isoformat(),
            "build_s": round(build_s, 3),
            "size_bytes": tree_size(path),
        }
        (path / MARKER).write_text(json.dumps(info, indent=1))

    # -- the size cap ------------------------------------------------------------------------
    async def evict(self) -> list[str]:
        """Remove the least recently used environments no live task uses while over the cap."""
        async with self._lock:
            busy = set(self._in_use.values()) | set(self._builds)
            removed = await asyncio.to_thread(self._evict, busy)
        for key in removed:
            log.info("environment %s evicted (least recently used, cache over its cap)", key)
        return removed

    def _evict(self, busy: set[str]) -> list[str]:
        envs = self.listing()
        total = sum(e["size_bytes"] for e in envs)
        removed = []
        for env in sorted(envs, key=lambda e: e["last_used"]):
            if total <= self.max_bytes:
                break
            if env["key"] in busy:
                continue
            shutil.rmtree(self.root / env["key"], ignore_errors=True)
            total -= env["size_bytes"]
            removed.append(env["key"])
        return removed

    def listing(self) -> list[dict[str, Any]]:
        """The complete environments: key, size, last use (blocks)."""
        envs = []
        for marker in self.root.glob(f"*/{MARKER}"):
            try:
                info = json.loads(marker.read_text())
                used = marker.stat().st_mtime
            except (OSError, ValueError):
                continue
            key = marker.parent.name
            envs.append({"key": key, "size_bytes": int(info["size_bytes"]), "last_used": used})
        return envs

    async def close(self) -> None:
        """Stop the builds in progress (their half-built folders go)."""
        tasks = [b.task for b in self._builds.values() if b.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def start(self) -> None:
        """Remove what interrupted builds left, then apply the cap."""
        await asyncio.to_thread(self._remove_incomplete)
        await self.evict()

    def _remove_incomplete(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for path in self.root.iterdir():
            if path.is_dir() and path.name != TASKS_DIR and not (path / MARKER).exists():
                log.info("environment %s: incomplete build removed", path.name)
                shutil.rmtree(path, ignore_errors=True)


def tool_environment() -> dict[str, str]:
    """The installer's environment: the job allowlist plus uv's and proxy settings, never
    the gateway's token (a source build runs the package's own code)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if (k in ALLOWED or k.startswith(TOOL_ENV_PREFIXES) or k.lower() in PROXY_VARS)
        and k != "VIRTUAL_ENV"
    }
    return {**env, "NO_COLOR": "1"}


async def _pump(stream: asyncio.StreamReader, build: _Build) -> None:
    while chunk := await stream.read(64 * 1024):
        build.emit(chunk)


def _kill_builder(user: JobUser) -> None:
    """End every process of a build's uid (nothing of it may run once we take its folder)."""
    containment.kill_uid(user.uid, user.gid)


def _write_readable(path: Path, text: str) -> None:
    """Write a file of ours, readable by all, in a folder the builder owned: never through a
    link (nothing of the builder runs by now; this holds even if something did)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as file:
        os.fchmod(fd, 0o644)
        file.write(text)


def _cache_of(path: Path) -> Path:
    """A build's own uv cache, beside its environment (removed with the build)."""
    return path.with_name(f".{path.name}.uv-cache")


def find_uv() -> str:
    """The uv binary of the ``uv`` package installed with the gateway, else one on PATH."""
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        return shutil.which("uv") or "uv"

"""The in-process launcher: a fork of this warm interpreter becomes ``python -u ENTRY ARGS...``.

``launch_fork`` is the zygote's ``Launch`` (see ``launch.py``): the shim calls it in a fork of the
zygote, which already imported the ``--preload`` modules, so a job skips interpreter start-up
and those imports. The child is made indistinguishable from a fresh ``python -u ENTRY`` to the
job's code: own process group, the job's cgroup, stdio on the given fds and /dev/null, no other
inherited fd, cwd, exactly the job's environment, signal dispositions of a fresh interpreter,
``sys.argv``, ``sys.path[0]`` = the entry's folder, a fresh ``__main__``, then Python's own exit
rules (``SystemExit``, tracebacks, non-daemon threads, atexit, flush, 120 on a failed flush;
an uncaught ``KeyboardInterrupt`` ends the process by SIGINT, wait status -2, as python does).

Errors before user code runs travel back on a close-on-exec pipe, as in ``subprocess``:
``launch_fork`` raises ``OSError`` with a one-line message and the child exits 127.

What a fork cannot make fresh (documented, not hidden): the hash seed (``PYTHONHASHSEED`` of
the job is ignored), the locale the zygote started with, what preloaded native libraries read
from the environment at import, ``/proc/<pid>/environ`` and ``cmdline`` (they show the zygote's;
``os.environ`` and every exec'd child have the job's), and objects the preloaded modules made.
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import errno
import fcntl
import importlib.machinery
import io
import os
import signal
import sys
import threading
import types
import weakref
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from vrungpu_gateway.engine.jobuser import drop
from vrungpu_gateway.engine.launch import LaunchSpec, join_cgroup

EXIT_SPAWN_ERROR = 127
EXIT_FLUSH_FAILED = 120  # what python exits with when flushing stdout fails at the end
MAX_ARG_STRLEN = 32 * 4096  # Linux: execve() refuses any single argument or "K=V" longer
FRESH_HANDLERS: dict[
    int, Callable[..., Any] | int
] = {  # what a fresh interpreter installs; every other signal is SIG_DFL
    signal.SIGINT: signal.default_int_handler,
    signal.SIGPIPE: signal.SIG_IGN,
    signal.SIGXFSZ: signal.SIG_IGN,
}


class SpawnError(Exception):
    """A step before the job's code failed; its message goes back to the parent."""


def launch_fork(spec: LaunchSpec, stdout_fd: int, stderr_fd: int) -> int:
    """Fork a child that runs ``spec.argv`` as ``python -u ENTRY ARGS...`` would, in this
    interpreter; return its pid once it runs the entry. ``spec.argv[0]`` (the interpreter) is
    ignored: the caller uses this launcher only for the zygote's own interpreter.
    Raise OSError (one line) when the child cannot get as far as the job's code."""
    entry, args = _entry_and_args(spec.argv)
    _check_exec_limits(spec)
    _flush_stdio()  # or text buffered here would be written twice
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    if write_fd < 3:  # keep it clear of the stdio fds the child sets up
        write_fd = _move_high(write_fd)
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(spec, entry, args, stdout_fd, stderr_fd, write_fd)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as report:
        error = report.read().decode(errors="replace")
    if error:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        raise OSError(error)
    return pid


def _entry_and_args(argv: list[str]) -> tuple[str, list[str]]:
    rest = argv[1:]
    if rest[:1] == ["-u"]:
        rest = rest[1:]
    if not rest or rest[0].startswith("-"):
        raise OSError(f"the warm launcher runs `python -u ENTRY [ARGS...]` only, not {argv!r}")
    return rest[0], rest[1:]


def _check_exec_limits(spec: LaunchSpec) -> None:
    """Refuse what execve() would refuse, so a job fails the same warm or cold."""
    for key in spec.env:
        if not key or "=" in key:
            raise OSError(errno.EINVAL, f"invalid environment variable name {key!r}")
    if "\0" in spec.cwd:
        raise OSError(errno.EINVAL, "embedded null byte in the job's cwd")
    total = 0
    for text in (*spec.argv, *(f"{k}={v}" for k, v in spec.env.items())):
        if "\0" in text:
            raise OSError(errno.EINVAL, "embedded null byte in the job's argv or env")
        size = len(os.fsencode(text)) + 1
        if size > MAX_ARG_STRLEN:
            raise OSError(errno.E2BIG, f"Argument list too long: one string is {size} bytes")
        total += size + 8  # and its pointer
    if total > os.sysconf("SC_ARG_MAX"):
        raise OSError(errno.E2BIG, f"Argument list too long: argv and env take {total} bytes")


def _move_high(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return high


# -- the child, up to the job's code ---------------------------------------------------------
def _child(
    spec: LaunchSpec, entry: str, args: list[str], out_fd: int, err_fd: int, report_fd: int
) -> NoReturn:
    """Never returns: the fork runs the job and ends with os._exit."""
    try:
        _reset_signals()  # first: the parent's handlers must never run in the job
        _prepare_process(spec, out_fd, err_fd, report_fd)
        source = _prepare_interpreter(spec, entry, args)
    except BaseException as exc:  # everything goes back to the parent
        with contextlib.suppress(BaseException):
            os.write(report_fd, _one_line(exc).encode(errors="replace"))
        os._exit(EXIT_SPAWN_ERROR)
    os.close(report_fd)  # EOF: the parent's launch_fork returns the pid
    status = EXIT_SPAWN_ERROR  # kept only if _run_main itself fails
    try:
        status = _run_main(source)
    finally:
        os._exit(status)


@contextlib.contextmanager
def _stage(what: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        raise SpawnError(f"{what}: {exc}") from exc


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _reset_signals() -> None:
    signal.set_wakeup_fd(-1)  # the parent's wakeup pipe is not the job's
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        with contextlib.suppress(OSError, ValueError):  # signals the C library reserves
            signal.signal(sig, FRESH_HANDLERS.get(sig, signal.SIG_DFL))


def _prepare_process(spec: LaunchSpec, out_fd: int, err_fd: int, report_fd: int) -> None:
    os.setpgid(0, 0)  # its own group, so the shim can signal the job and its children at once
    with _stage("cannot join the job's cgroup"):
        join_cgroup(spec.cgroup_procs)
    with _stage("cannot set up stdio"):
        _redirect_stdio(out_fd, err_fd)
        _close_inherited(keep=report_fd)
    with _stage("cannot enter the working directory"):
        os.chdir(spec.cwd)
    with _stage("cannot become the job user"):  # last: the steps above may need root
        drop(spec.user)


def _redirect_stdio(out_fd: int, err_fd: int) -> None:
    # Copies above 2 first: the given fds may themselves be 0, 1 or 2.
    out_high = fcntl.fcntl(out_fd, fcntl.F_DUPFD, 3)
    err_high = fcntl.fcntl(err_fd, fcntl.F_DUPFD, 3)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out_high, 1)
    os.dup2(err_high, 2)


def _close_inherited(*, keep: int) -> None:
    """Close every fd above 2 but ``keep``: the zygote's socket, the shim's pipes and logs."""
    try:
        top = max(int(name) for name in os.listdir("/proc/self/fd")) + 1
    except (OSError, ValueError):
        top = os.sysconf("SC_OPEN_MAX")
    os.closerange(3, keep)
    os.closerange(keep + 1, max(top, keep + 1))


def _prepare_interpreter(spec: LaunchSpec, entry: str, args: list[str]) -> bytes:
    """Make this interpreter look freshly started on ``entry``; the entry's source."""
    with _stage("invalid environment"):
        os.environ.clear()  # unsetenv/setenv too, so exec'd children see exactly the job's env
        os.environ.update(spec.env)
    path = os.path.abspath(entry)  # python makes __file__ absolute, sys.argv[0] stays as given
    with _stage(f"can't open file {path!r}"), open(path, "rb") as fh:
        source = fh.read()
    sys.argv = [entry, *args]
    sys.orig_argv = list(spec.argv)
    if not sys.flags.safe_path and sys.path:
        sys.path[0] = os.path.dirname(os.path.realpath(path))  # symlinks resolved, as python
    _reset_stdio(spec.env)
    _reset_hooks()
    _refresh_preloaded(spec.env)
    _skip_preload_finalizers()
    sys.modules["__main__"] = _fresh_main(path)
    return source


def _skip_preload_finalizers() -> None:
    """Exit-time finalizers the preloaded modules registered (torch has 100+) only free state
    of a process image that is thrown away at the job's end; in a fork each one also faults
    in copy-on-write pages. Those of the job's own objects still run."""
    for finalizer in list(weakref.finalize._registry):  # type: ignore[attr-defined]
        finalizer.atexit = False


def _reset_stdio(env: dict[str, str]) -> None:
    """New sys.std* on fds 0-2, as ``python -u`` makes them (PYTHONIOENCODING honoured)."""
    base = sys.__stdout__
    encoding = getattr(base, "encoding", None) or "utf-8"
    errors = getattr(base, "errors", None) or "strict"
    wanted, _, wanted_errors = env.get("PYTHONIOENCODING", "").partition(":")
    encoding, errors = wanted or encoding, wanted_errors or errors
    sys.stdin = sys.__stdin__ = _text_stream(  # type: ignore[misc]
        0, "<stdin>", encoding, errors
    )
    sys.stdout = sys.__stdout__ = _text_stream(  # type: ignore[misc]
        1, "<stdout>", encoding, errors
    )
    sys.stderr = sys.__stderr__ = _text_stream(  # type: ignore[misc]
        2, "<stderr>", encoding, "backslashreplace"
    )


def _text_stream(fd: int, name: str, encoding: str, errors: str) -> io.TextIOWrapper:
    write = fd != 0
    raw = io.FileIO(fd, "wb" if write else "rb", closefd=False)
    raw.name = name  # type: ignore[misc]  # python names its std streams so
    # -u: writes go straight to the fd (no buffer, write_through); stdin stays buffered.
    buffer: Any = raw if write else io.BufferedReader(raw)  # python -u wraps the raw FileIO
    text = io.TextIOWrapper(
        buffer,
        encoding=encoding,
        errors=errors,
        newline="\n",
        write_through=write,
    )
    text.mode = "w" if write else "r"  # type: ignore[misc]
    return text


def _reset_hooks() -> None:
    sys.excepthook = sys.__excepthook__
    threading.excepthook = threading.__excepthook__
    if "logging" in sys.modules:  # a fresh root logger: basicConfig() in the job must work
        root = sys.modules["logging"].getLogger()
        root.handlers.clear()
        root.setLevel("WARNING")


def _refresh_preloaded(env: dict[str, str]) -> None:
    """Per-process state that preloaded modules computed once, made per job again."""
    mp_process = sys.modules.get("multiprocessing.process")
    if mp_process is not None:
        # spawn resolves a relative __main__ path against the cwd at *import* time
        mp_process.ORIGINAL_DIR = os.getcwd()  # type: ignore[attr-defined]
        mp_process.current_process().authkey = os.urandom(32)
    tempfile = sys.modules.get("tempfile")
    if tempfile is not None:
        tempfile.tempdir = None  # type: ignore[attr-defined]  # TMPDIR is the job's now
    np_random = sys.modules.get("numpy.random")
    if np_random is not None:
        np_random.seed()  # type: ignore[attr-defined]  # jobs must not share one sequence
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.default_generator.seed()  # type: ignore[attr-defined]
        threads = env.get("OMP_NUM_THREADS", "")
        if threads.isdigit() and int(threads) > 0:  # read by the native library at preload
            torch.set_num_threads(int(threads))  # type: ignore[attr-defined]


def _fresh_main(path: str) -> types.ModuleType:
    """``__main__`` as python makes it for a script; kept after the code ends (unlike runpy's
    temporary module), so threads and atexit handlers can still pickle the job's classes."""
    main = types.ModuleType("__main__")
    main.__file__ = path
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
    main.__cached__ = None  # type: ignore[attr-defined]
    main.__builtins__ = builtins  # type: ignore[attr-defined]
    return main


# -- the child, running the job's code and ending as python ends -----------------------------
def _run_main(source: bytes) -> int:
    """Run the entry in ``__main__``; the exit status python would end with."""
    main = sys.modules["__main__"]
    interrupted = False
    try:
        code = compile(source, main.__file__ or "<main>", "exec")
        exec(code, main.__dict__)  # running the job's code is the point
        status = 0
    except SystemExit as exc:
        status = _system_exit_status(exc)
    except BaseException as exc:  # python prints whatever ends the script
        interrupted = isinstance(exc, KeyboardInterrupt)
        _print_uncaught(exc)
        status = 1
    return _finalize(status, interrupted=interrupted)


def _system_exit_status(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with contextlib.suppress(Exception):
        print(code, file=sys.stderr)
    return 1


def _print_uncaught(exc: BaseException) -> None:
    # Drop our own frame (the exec line) so the traceback starts at the job's <module>, and
    # give a SyntaxError no traceback at all, exactly as python prints them.
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    exc.__traceback__ = tb  # the display reads the exception's own traceback, not the argument
    sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, tb
    try:
        sys.excepthook(type(exc), exc, tb)
    except BaseException:  # a broken excepthook: python falls back the same
        sys.__excepthook__(type(exc), exc, tb)


def _finalize(status: int, *, interrupted: bool) -> int:
    """Python's shutdown order: join non-daemon threads, atexit, flush stdio."""
    with contextlib.suppress(BaseException):
        threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    if not _flush_stdio():
        status = EXIT_FLUSH_FAILED
    if interrupted:
        # python ends an uncaught KeyboardInterrupt by SIGINT, so callers see "interrupted"
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        status = 128 + signal.SIGINT
    return status


def _flush_stdio() -> bool:
    ok = True
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None and not stream.closed:
                stream.flush()
        except Exception:  # python exits 120 when the final flush fails
            ok = False
    return ok

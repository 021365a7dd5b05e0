"""``%%vrungpu`` (run the cell or a folder on the gateway, or in a named remote session) and
``%vrungpu`` (connect, tasks, logs, cancel, attach, gpus, models, sessions, stop, push, pull),
configured with traitlets.

Connection, in order: ``%vrungpu connect URL --token T``, ``%config VrunGPUMagics.url/token``,
``VRUNGPU_URL`` / ``VRUNGPU_TOKEN``, then the user's config file (`vrungpu_magic.config`).
Widgets: ``VrunGPUMagics.widgets`` is ``auto`` (a panel inside a Jupyter kernel with ipywidgets,
text elsewhere), ``on`` or ``off``; its default comes from ``VRUNGPU_WIDGETS``.
User mistakes and gateway errors are one-line ``UsageError``s; a failed job is a
`TaskFailedError`, so "Run all" stops at its cell.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import display
from traitlets import CaselessStrEnum, Float, Int, Unicode, default, observe

from vrungpu_magic.awaited import install_await_rewriter
from vrungpu_magic.client import VrunGPUClient, VrunGPUError
from vrungpu_magic.config import Connection, save_connection
from vrungpu_magic.follow import TaskFollower, TaskView
from vrungpu_magic.handle import TaskHandle, raise_for_task
from vrungpu_magic.render import TextTaskView, format_gpus, model_table, task_table
from vrungpu_magic.sessions import Sessions, names_session, parse_env, placement, session_table

WIDGET_MODES = ["auto", "on", "off"]
HELP = """\
%%vrungpu [--gpu N] [--gpus K] [--cpu] [--timeout S] [--name X] [--priority P] [--async]
          [--dir PATH [--entry FILE]] [--env K=V ...] [--requirements FILE] [--out NAME]
          [--args ...]
    run the cell on the gateway; with --dir, the folder PATH (zipped, .vrungpuignore applied);
    --requirements: the job runs in an environment with these packages (built once, cached)
%vrungpu --dir PATH [--entry FILE] [options]  run a folder from a line magic
%vrungpu connect URL [--token T] [--ca-bundle PEM] [--save]
                                            connect (and save to the config file)
%vrungpu tasks [--status S] [--limit N]     the task table
%vrungpu logs ID [--tail N] [--stream S]    a task's log
%vrungpu cancel ID                          cancel a task
%vrungpu attach ID [--async] [--out NAME]   re-open a task's live panel, log replayed
%vrungpu gpus                               the GPUs: utilisation, memory, holder
%vrungpu models                             the model registry
%%vrungpu --session NAME [--gpus K | --gpu N | --cpu] [--env K=V ...]
    run the cell in the persistent remote kernel NAME (started on first use, reused after)
%vrungpu sessions                           the sessions: kernel, GPUs, state, idle time
%vrungpu stop NAME                          shut a session's kernel down (frees its GPUs)
%vrungpu push NAME VAR [VAR ...] [--max-push-mb M]   send local variables (pickled)
%vrungpu pull NAME VAR [VAR ...] [--max-push-mb M]   bring remote variables back"""


class _HelpShown(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that reports mistakes as one-line UsageErrors."""

    def error(self, message: str) -> Any:
        raise UsageError(f"{self.prog}: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> Any:
        if message:
            print(message, file=sys.stderr)
        raise _HelpShown


def _parser(prog: str, *specs: tuple[tuple[str, ...], dict[str, Any]]) -> _Parser:
    parser = _Parser(prog=prog)
    for names, options in specs:
        parser.add_argument(*names, **options)
    return parser


RUN_PARSER = _parser(
    "%%vrungpu",
    (("--gpu",), {"type": int, "metavar": "N", "help": "run on GPU N (waits for it)"}),
    (("--gpus",), {"type": int, "metavar": "K", "help": "how many GPUs (default 1)"}),
    (("--cpu",), {"action": "store_true", "help": "run on a CPU slot"}),
    (("--timeout",), {"type": float, "metavar": "S", "help": "seconds before it is stopped"}),
    (("--name",), {"help": "a name for the task"}),
    (("--priority",), {"type": int, "metavar": "P", "help": "higher runs first"}),
    (("--async",), {"dest": "background", "action": "store_true", "help": "return at once"}),
    (("--dir",), {"metavar": "PATH", "help": "run this project folder instead of the cell"}),
    (("--entry",), {"metavar": "FILE", "help": "the folder's entry point (default main.py)"}),
    (("--env",), {"nargs": "+", "action": "extend", "default": [], "metavar": "K=V"}),
    (("--requirements",), {"metavar": "FILE", "help": "a requirements.txt for the job's env"}),
    (("--out",), {"metavar": "NAME", "help": "store the task handle in this variable"}),
    (("--args",), {"nargs": argparse.REMAINDER, "default": [], "help": "job arguments (last)"}),
)
ATTACH_PARSER = _parser(
    "%vrungpu attach",
    (("task_id",), {}),
    (("--async",), {"dest": "background", "action": "store_true"}),
    (("--out",), {"metavar": "NAME"}),
)
CONNECT_PARSER = _parser(
    "%vrungpu connect",
    (("url",), {"nargs": "?"}),
    (("--token",), {"help": "the gateway's token"}),
    (("--ca-bundle",), {"help": "CA certificates (PEM) of an https gateway"}),
    (("--save",), {"action": "store_true", "help": "write it to the user's config file"}),
)
TASKS_PARSER = _parser(
    "%vrungpu tasks",
    (("--status",), {}),
    (("--limit",), {"type": int, "default": 20}),
)
LOGS_PARSER = _parser(
    "%vrungpu logs",
    (("task_id",), {}),
    (("--tail",), {"type": int}),
    (("--stream",), {"choices": ["stdout", "stderr", "all"], "default": "all"}),
)
ID_PARSER = _parser("%vrungpu cancel", (("task_id",), {}))
SESSION_PARSER = _parser(
    "%%vrungpu --session",
    (("--session",), {"required": True, "metavar": "NAME", "help": "the remote session"}),
    (("--gpu",), {"type": int, "metavar": "N", "help": "a new session takes GPU N"}),
    (("--gpus",), {"type": int, "metavar": "K", "help": "a new session takes K GPUs"}),
    (("--cpu",), {"action": "store_true", "help": "a new session takes a CPU slot"}),
    (("--env",), {"nargs": "+", "action": "extend", "default": [], "metavar": "K=V"}),
)
STOP_PARSER = _parser("%vrungpu stop", (("name",), {"metavar": "NAME"}))
TRANSFER_SPECS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("name",), {"metavar": "NAME"}),
    (("variables",), {"nargs": "+", "metavar": "VAR"}),
    (("--max-push-mb",), {"type": float, "metavar": "M", "help": "size limit (MB)"}),
)
PUSH_PARSER = _parser("%vrungpu push", *TRANSFER_SPECS)
PULL_PARSER = _parser("%vrungpu pull", *TRANSFER_SPECS)


def _parse(parser: _Parser, argv: list[str]) -> argparse.Namespace:
    try:
        return parser.parse_args(argv)
    except _HelpShown:
        raise
    except ValueError as exc:
        raise UsageError(f"{parser.prog}: {exc}") from None


def _split(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"%vrungpu: cannot parse the options: {exc}") from None


def _gateway_error(exc: VrunGPUError, url: str) -> UsageError:
    """A gateway failure as the one line the notebook shows."""
    hint = ""
    if exc.status == 401:
        hint = f"; set the token: %vrungpu connect {url} --token TOKEN"
    elif exc.status == 0:
        hint = "; is the gateway running? %vrungpu connect URL"
    return UsageError(f"VrunGPU: {exc}{hint}")


@dataclass
class _Job:
    """A task being followed from a cell."""

    handle: TaskHandle
    follower: TaskFollower
    background: bool


@dataclass
class _RunRequest:
    code: str | None
    folder: Path | None
    entry: str
    options: dict[str, Any]


def _code_lines(cell: str | None) -> list[str]:
    lines = (cell or "").splitlines()
    return [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def _run_request(args: argparse.Namespace, cell: str | None) -> _RunRequest:
    """Validate the options of a run; the request to send."""
    if args.gpu is not None and args.cpu:
        raise UsageError("%%vrungpu: give --gpu or --cpu, not both")
    if args.gpus is not None and args.gpus < 1:
        raise UsageError("%%vrungpu: --gpus must be at least 1")
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("%%vrungpu: --timeout must be a positive number of seconds")
    if args.out is not None and not args.out.isidentifier():
        raise UsageError(f"%%vrungpu: --out needs a variable name, got {args.out!r}")
    env = parse_env(args.env)
    options = {
        "timeout": args.timeout,
        "gpu_id": args.gpu,
        "gpus": args.gpus,
        "device": "cpu" if args.cpu else None,
        "name": args.name,
        "priority": args.priority,
        "env": env or None,
        "args": args.args or None,
        "requirements": _requirements(args.requirements),
    }
    options = {k: v for k, v in options.items() if v is not None}
    if args.dir is None:
        if args.entry is not None:
            raise UsageError("%%vrungpu: --entry goes with --dir PATH")
        if not _code_lines(cell):
            raise UsageError("%%vrungpu: nothing to run: write code in the cell, or give --dir")
        return _RunRequest(cell, None, "main.py", options)
    return _folder_request(args, cell, options)


def _requirements(path: str | None) -> list[str] | None:
    """The lines of a requirements file (comments and blank lines dropped), sent as they are:
    the gateway builds the job's environment from them."""
    if path is None:
        return None
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"%%vrungpu: --requirements {path}: {exc.strerror or exc}") from None
    lines = (line.split(" #", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _folder_request(
    args: argparse.Namespace, cell: str | None, options: dict[str, Any]
) -> _RunRequest:
    folder = Path(args.dir).expanduser()
    entry = args.entry or "main.py"
    if not folder.is_dir():
        raise UsageError(f"%%vrungpu: --dir {args.dir}: no such folder")
    if not (folder / entry).is_file():
        raise UsageError(f"%%vrungpu: {entry} is not a file in {args.dir} (see --entry)")
    if _code_lines(cell):
        raise UsageError("%%vrungpu: with --dir the folder runs, not the cell: leave it empty")
    return _RunRequest(None, folder, entry, options)


@magics_class
class VrunGPUMagics(Magics):
    """The ``%%vrungpu`` / ``%vrungpu`` magics."""

    url = Unicode("", help="Gateway URL (empty: VRUNGPU_URL or the config file).").tag(config=True)
    token = Unicode("", help="Gateway token (empty: VRUNGPU_TOKEN or the config file).").tag(
        config=True
    )
    ca_bundle = Unicode(
        "",
        help="CA certificates (PEM) an https gateway's certificate is checked against "
        "(empty: VRUNGPU_CA_BUNDLE, the config file, or the system's).",
    ).tag(config=True)
    widgets = CaselessStrEnum(
        WIDGET_MODES,
        help="Show ipywidgets panels: 'auto' (in a Jupyter kernel with ipywidgets), 'on', "
        "'off' (plain text: progress as lines, logs as they come). Default: $VRUNGPU_WIDGETS.",
    ).tag(config=True)
    log_lines = Int(200, help="How many log lines a task panel keeps.").tag(config=True)
    max_push_mb = Float(
        512, help="Largest pickle (MB) %vrungpu push sends or pull brings back."
    ).tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self._client: VrunGPUClient | None = None
        self.sessions = Sessions(shell)
        if shell is not None:
            install_await_rewriter(shell, self)

    @default("widgets")
    def _default_widgets(self) -> str:
        mode = os.environ.get("VRUNGPU_WIDGETS", "auto").strip().lower()
        return mode if mode in WIDGET_MODES else "auto"

    @observe("url", "token", "ca_bundle")
    def _forget_client(self, _change: Any) -> None:
        self._client = None

    @property
    def client(self) -> VrunGPUClient:
        if self._client is None:
            self._client = VrunGPUClient(
                self.url or None, self.token or None, ca_bundle=self.ca_bundle or None
            )
        return self._client

    def use_widgets(self) -> bool:
        """Whether panels are ipywidgets (else plain text)."""
        if self.widgets == "off":
            return False
        try:
            import ipywidgets  # type: ignore[import-untyped]  # noqa: F401
        except ImportError:
            return False
        return self.widgets == "on" or getattr(self.shell, "kernel", None) is not None

    # -- entry points ----------------------------------------------------------------------------
    @line_cell_magic
    def vrungpu(self, line: str, cell: str | None = None) -> Any:
        """Run the cell on the VrunGPU gateway, or a ``%vrungpu`` command (``%vrungpu help``)."""
        return self._guarded(lambda: self._dispatch(line, cell))

    async def vrungpu_async(self, line: str, cell: str | None = None) -> Any:
        """`vrungpu` for an awaited cell: the kernel keeps serving widget clicks meanwhile."""
        job = self._guarded(lambda: self._dispatch(line, cell, start_only=True))
        if not isinstance(job, _Job):
            return job
        if job.background:
            return self._conclude(job, None)
        try:
            task = await job.follower.run_async()
        except VrunGPUError as exc:
            raise _gateway_error(exc, self.client.url) from None
        return self._conclude(job, task)

    def _guarded(self, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except _HelpShown:
            return None
        except VrunGPUError as exc:
            raise _gateway_error(exc, self.client.url) from None

    def _dispatch(self, line: str, cell: str | None, start_only: bool = False) -> Any:
        argv = _split(line)
        if names_session(argv):
            return self._run_in_session(argv, cell)
        if cell is not None or (argv and argv[0].startswith("-")):
            job = self._start_run(argv, cell)
        elif argv and argv[0] == "attach":
            job = self._start_attach(argv[1:])
        else:
            return self._command(argv)
        if start_only:
            return job
        return self._conclude(job, None if job.background else job.follower.run())

    def _command(self, argv: list[str]) -> Any:
        commands: dict[str, Callable[[list[str]], Any]] = {
            "connect": self._connect,
            "tasks": self._tasks,
            "logs": self._logs,
            "cancel": self._cancel,
            "gpus": self._gpus,
            "models": self._models,
            "sessions": self._sessions,
            "stop": self._stop,
            "push": self._push,
            "pull": self._pull,
        }
        if not argv or argv[0] == "help":
            print(HELP)
            return None
        if argv[0] not in commands:
            raise UsageError(f"%vrungpu: unknown command {argv[0]!r}; try %vrungpu help")
        return commands[argv[0]](argv[1:])

    # -- running and following -------------------------------------------------------------------
    def _view(self) -> TaskView:
        if not self.use_widgets():
            return TextTaskView()
        from vrungpu_magic.widgets import TaskPanel

        panel = TaskPanel(log_lines=self.log_lines)
        display(panel)
        return panel

    def _start_run(self, argv: list[str], cell: str | None) -> _Job:
        args = _parse(RUN_PARSER, argv)
        request = _run_request(args, cell)
        view = self._view()
        try:
            task_id = self._submit(request, view)
        except (VrunGPUError, OSError) as exc:
            view.abandon(f"Not submitted: {getattr(exc, 'detail', exc)}")
            if isinstance(exc, OSError):
                raise UsageError(f"%%vrungpu: cannot read the folder: {exc}") from None
            raise
        return self._job(task_id, view, background=args.background, out=args.out)

    def _submit(self, request: _RunRequest, view: TaskView) -> str:
        if request.folder is not None:
            return self.client.run_project(
                request.folder, request.entry, on_progress=view.show_upload, **request.options
            )
        assert request.code is not None
        return self.client.run_async(request.code, **request.options)

    def _start_attach(self, argv: list[str]) -> _Job:
        args = _parse(ATTACH_PARSER, argv)
        task = self.client.get_task_status(args.task_id)  # unknown id: one line, no panel
        view = self._view()
        return self._job(task["task_id"], view, background=args.background, out=args.out)

    def _job(self, task_id: str, view: TaskView, *, background: bool, out: str | None) -> _Job:
        handle = TaskHandle(self.client, task_id)
        follower = TaskFollower(self.client, task_id, view, on_task=handle._remember)
        view.bind(task_id, on_cancel=lambda: _in_thread(follower.cancel_remote, "Cancelled"))
        handle.panel = None if isinstance(view, TextTaskView) else view
        if out and self.shell is not None:
            self.shell.user_ns[out] = handle
        return _Job(handle, follower, background)

    def _conclude(self, job: _Job, task: dict[str, Any] | None) -> Any:
        if task is not None:  # followed to the end in the cell
            raise_for_task(task)
            return None
        if job.handle.panel is not None:
            job.handle.thread = job.follower.start_background()
        else:
            task_id = job.handle.task_id
            print(
                f"Task {task_id} runs in the background: .result() waits for it, "
                f"%vrungpu attach {task_id} follows it"
            )
        return job.handle

    # -- sessions --------------------------------------------------------------------------------
    def _run_in_session(self, argv: list[str], cell: str | None) -> None:
        args = _parse(SESSION_PARSER, argv)
        where_to = placement(args)
        if cell is None:
            raise UsageError("%vrungpu --session runs a cell: write %%vrungpu --session NAME")
        if not _code_lines(cell):
            return None  # as an empty local cell: nothing runs, nothing is started
        self.sessions.run_cell(self.client, args.session, cell, where_to)
        return None

    def _sessions(self, argv: list[str]) -> Any:
        if argv:
            raise UsageError(f"%vrungpu sessions: unexpected {' '.join(argv)}")
        return session_table(self.client.list_kernels())

    def _stop(self, argv: list[str]) -> None:
        self.sessions.stop(self.client, _parse(STOP_PARSER, argv).name)

    def _push(self, argv: list[str]) -> None:
        args = _parse(PUSH_PARSER, argv)
        limit = self._push_limit(args)
        self.sessions.push(self.client, args.name, args.variables, limit)

    def _pull(self, argv: list[str]) -> None:
        args = _parse(PULL_PARSER, argv)
        limit = self._push_limit(args)
        self.sessions.pull(self.client, args.name, args.variables, limit)

    def _push_limit(self, args: argparse.Namespace) -> float:
        limit = self.max_push_mb if args.max_push_mb is None else args.max_push_mb
        if not math.isfinite(limit) or limit <= 0:
            raise UsageError("%vrungpu: --max-push-mb must be a positive number of MB")
        return float(limit)

    # -- commands --------------------------------------------------------------------------------
    def _connect(self, argv: list[str]) -> None:
        args = _parse(CONNECT_PARSER, argv)
        if args.url is None and args.token is None and args.ca_bundle is None:
            client = self.client
        else:
            client = VrunGPUClient(
                args.url or self.url or None,
                args.token or None,
                ca_bundle=args.ca_bundle or self.ca_bundle or None,
            )
        try:
            info = client.check_health()
        except VrunGPUError as exc:
            raise _gateway_error(exc, client.url) from None
        self.url, self.token = client.url, client.token or ""
        self.ca_bundle = client.ca_bundle or ""
        self._client = client
        gpus = info.get("gpu_count", 0)
        free = info.get("available_gpus", 0)
        free = len(free) if isinstance(free, list) else free
        version = info.get("version", "?")
        print(f"Connected to {client.url}: VrunGPU {version}, {gpus} GPUs ({free} free)")
        if args.save:
            path = save_connection(Connection(client.url, client.token, client.ca_bundle))
            print(f"Saved to {path}")

    def _tasks(self, argv: list[str]) -> Any:
        args = _parse(TASKS_PARSER, argv)
        return task_table(self.client.list_tasks(status=args.status, limit=args.limit))

    def _logs(self, argv: list[str]) -> None:
        args = _parse(LOGS_PARSER, argv)
        streams = ["stdout", "stderr"] if args.stream == "all" else [args.stream]
        for stream in streams:
            text = self.client.logs(args.task_id, stream, tail=args.tail)
            target = sys.stderr if stream == "stderr" else sys.stdout
            target.write(text if not text or text.endswith("\n") else text + "\n")
            target.flush()

    def _cancel(self, argv: list[str]) -> None:
        args = _parse(ID_PARSER, argv)
        result = self.client.cancel(args.task_id)
        print(f"Cancelled task {args.task_id} (now {result.get('status')})")

    def _gpus(self, argv: list[str]) -> None:
        def fetch() -> tuple[dict[str, Any], dict[str, Any]]:
            return self.client.get_gpu_info(), self.client.get_gpu_pool()

        if self.use_widgets():
            from vrungpu_magic.widgets import GpuPanel

            display(GpuPanel(fetch))
        else:
            print(format_gpus(*fetch()))

    def _models(self, argv: list[str]) -> Any:
        list_models = getattr(self.client, "list_models", None)
        if list_models is None:
            raise UsageError("%vrungpu models: this client has no model registry yet")
        return model_table(list_models())


def _in_thread(func: Callable[..., Any], *args: Any) -> None:
    """Run a blocking call (cancel waits for the job to stop) off the kernel's event loop."""
    threading.Thread(target=func, args=args, daemon=True, name="vrungpu-cancel").start()

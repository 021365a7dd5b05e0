"""Named remote sessions: ``%%vrungpu --session NAME`` and ``%vrungpu sessions | stop | push |
pull``. A session is one live kernel on the gateway that carries that name; the first cell that
names it starts it, later cells (from this or any other notebook) find it and reuse its state.

A cell runs over the kernel's channels (`vrungpu_magic.kernels`) and its outputs are published
here as they come (`vrungpu_magic.publish`). Interrupting the cell interrupts the kernel and
waits for it to stop; the session lives on. A remote ``input()`` is answered from this
notebook when the local cell may read stdin (a Jupyter frontend, a terminal); elsewhere (nbclient,
batch runs) it raises StdinNotImplementedError in the remote cell.
"""

from __future__ import annotations

import contextlib
import getpass
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from IPython.core.error import UsageError

from vrungpu_magic import render, transfer
from vrungpu_magic.client import VrunGPUClient
from vrungpu_magic.kernels import Execution, Kernel, KernelChannel, KernelEnded, kernelspec_for
from vrungpu_magic.publish import OutputPublisher, SessionInterrupted, remote_error
from vrungpu_magic.render import Column, Table, fmt_bytes, fmt_duration

T = TypeVar("T")


@dataclass(frozen=True)
class Placement:
    """Where a new session's kernel runs: ``--gpus K``, ``--gpu N`` or ``--cpu``, and its env."""

    gpus: int | None = None
    gpu_id: int | None = None
    cpu: bool = False
    env: dict[str, str] = field(default_factory=dict)

    @property
    def spec(self) -> str | None:
        return kernelspec_for(gpus=1 if self.gpu_id is not None else self.gpus, cpu=self.cpu)

    def options(self) -> str:
        """The options as written (empty when none were given)."""
        parts = [f"--gpus {self.gpus}"] if self.gpus is not None else []
        parts += [f"--gpu {self.gpu_id}"] if self.gpu_id is not None else []
        parts += ["--cpu"] if self.cpu else []
        parts += [f"--env {k}=..." for k in self.env]
        return " ".join(parts)


def parse_env(items: list[str]) -> dict[str, str]:
    """``--env K=V ...`` as a dict; a UsageError for an item without ``=``."""
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"%%vrungpu: --env takes KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def names_session(argv: list[str]) -> bool:
    """Whether a ``%%vrungpu`` line runs the cell in a session (a job's own ``--args`` aside)."""
    options = argv[: argv.index("--args")] if "--args" in argv else argv
    return any(a == "--session" or a.startswith("--session=") for a in options)


def placement(args: Any) -> Placement:
    """A session cell's parsed options, validated."""
    chosen = [o for o, v in (("--gpu", args.gpu), ("--gpus", args.gpus)) if v is not None]
    chosen += ["--cpu"] if args.cpu else []
    if len(chosen) > 1:
        raise UsageError(f"%%vrungpu: give one of --gpus K, --gpu N or --cpu, not {chosen}")
    if args.gpus is not None and args.gpus < 1:
        raise UsageError("%%vrungpu: --gpus must be at least 1")
    if not args.session.strip():
        raise UsageError("%%vrungpu: --session needs a name")
    return Placement(gpus=args.gpus, gpu_id=args.gpu, cpu=args.cpu, env=parse_env(args.env))


def where(kernel: Kernel) -> str:
    """``GPU 0``, ``GPUs 0,1`` or ``CPU``."""
    return render.placement({"gpu_ids": kernel.get("gpus") or [], "device": kernel.get("device")})


SESSION_COLUMNS: list[Column] = [
    ("session", lambda k: k.get("session")),
    ("kernel_id", lambda k: k.get("id")),
    ("where", where),
    ("kernelspec", lambda k: k.get("name")),
    ("state", lambda k: k.get("execution_state")),
    ("idle", lambda k: fmt_duration(k["idle_s"]) if k.get("idle_s") is not None else None),
    ("connections", lambda k: k.get("connections")),
]


def session_table(kernels: list[Kernel]) -> Table:
    """Named sessions first, then kernels other frontends started (no session name)."""
    ordered = sorted(kernels, key=lambda k: (k.get("session") is None, k.get("session") or ""))
    return Table(ordered, SESSION_COLUMNS, "No sessions.")


class Sessions:
    """The magic's sessions: which kernel each name had, cells run in them, transfers."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.seen: dict[str, str] = {}  # session name -> the kernel id it had here

    # -- finding and starting ---------------------------------------------------------------
    def open(self, client: VrunGPUClient, name: str, where_to: Placement) -> Kernel:
        """The live kernel of session ``name``, started now if there is none."""
        found = client.list_kernels(session=name)
        if found:
            kernel = found[0]
            if where_to.options():
                _say(
                    f"Session {name} already runs on {where(kernel)} ({kernel.get('name')}): "
                    f"{where_to.options()} ignored; %vrungpu stop {name} to start it anew",
                    sys.stderr,
                )
        else:
            kernel, created = client.start_kernel(
                where_to.spec, session=name, gpu_id=where_to.gpu_id, env=where_to.env or None
            )
            if created:
                _say(f"Session {name}: started kernel {kernel['id']} on {where(kernel)}")
        self._remember(name, kernel)
        return kernel

    def _remember(self, name: str, kernel: Kernel) -> None:
        before = self.seen.get(name)
        if before is not None and before != kernel["id"]:
            _say(
                f"Session {name}'s kernel {before} is gone (stopped, culled when idle, or "
                "died): its variables are lost",
                sys.stderr,
            )
        self.seen[name] = kernel["id"]

    def existing(self, client: VrunGPUClient, name: str, command: str) -> Kernel:
        """The live kernel of session ``name``; a UsageError when there is none."""
        found = client.list_kernels(session=name)
        if not found:
            self.seen.pop(name, None)
            raise UsageError(
                f"{command}: no session {name!r} (start it with a %%vrungpu --session {name} "
                "cell; %vrungpu sessions lists them)"
            )
        self._remember(name, found[0])
        return found[0]

    # -- running a cell -----------------------------------------------------------------------
    def run_cell(self, client: VrunGPUClient, name: str, code: str, where_to: Placement) -> None:
        """Run ``code`` in the session; its outputs appear here as they come. Raises the
        remote exception (`RemoteError`), or `SessionInterrupted` after an interrupt."""
        kernel = self.open(client, name, where_to)
        publisher = OutputPublisher(self.shell)
        with client.kernel_channel(kernel["id"]) as channel:
            execution = channel.execute(code, allow_stdin=self._allow_stdin())
            try:
                self._follow(execution, publisher)
            except KeyboardInterrupt:
                self._interrupt(client, name, execution, publisher)
            except KernelEnded as exc:
                raise UsageError(
                    f"VrunGPU: session {name} lost the cell: {exc} (its variables are lost)"
                ) from None
        _raise_for(name, execution, publisher)

    def _follow(self, execution: Execution, publisher: OutputPublisher) -> None:
        for msg in execution.messages():
            if msg.get("channel") == "stdin":
                _answer_input(execution.channel, msg)
            else:
                publisher.apply(msg)

    def _interrupt(
        self,
        client: VrunGPUClient,
        name: str,
        execution: Execution,
        publisher: OutputPublisher,
    ) -> None:
        """Interrupt the kernel, then show what it sends until it is idle again (a second
        interrupt stops waiting)."""
        kernel_id = execution.channel.kernel_id
        client.interrupt_kernel(kernel_id)
        with contextlib.suppress(KeyboardInterrupt, KernelEnded):  # interrupted again, or gone
            self._follow(execution, publisher)
        raise SessionInterrupted(
            f"Interrupted: interrupted session {name} (kernel {kernel_id}); the session lives on"
        )

    def _allow_stdin(self) -> bool:
        """Whether this cell may read stdin, as the remote one then may too."""
        kernel = getattr(self.shell, "kernel", None)
        if kernel is not None:
            return bool(getattr(kernel, "_allow_stdin", False))
        return sys.stdin is not None and sys.stdin.isatty()

    # -- commands -------------------------------------------------------------------------------
    def stop(self, client: VrunGPUClient, name: str) -> None:
        kernel = self.existing(client, name, "%vrungpu stop")
        client.shutdown_kernel(kernel["id"])
        self.seen.pop(name, None)
        _say(f"Stopped session {name} (kernel {kernel['id']}, {where(kernel)} released)")

    def push(self, client: VrunGPUClient, name: str, names: list[str], max_mb: float) -> None:
        namespace = self.shell.user_ns if self.shell is not None else {}
        try:
            values = transfer.pickle_values(namespace, names, max_mb)  # refused before sending
        except transfer.TransferError as exc:
            raise UsageError(f"%vrungpu push: {exc}") from None
        kernel = self.existing(client, name, "%vrungpu push")
        with client.kernel_channel(kernel["id"]) as channel:
            _transfer(name, "push", lambda: transfer.push(channel, values))
        size = sum(len(v) for v in values.values())
        _say(f"Pushed {', '.join(names)} to session {name} ({fmt_bytes(size)})")

    def pull(self, client: VrunGPUClient, name: str, names: list[str], max_mb: float) -> None:
        kernel = self.existing(client, name, "%vrungpu pull")
        with client.kernel_channel(kernel["id"]) as channel:
            values = _transfer(name, "pull", lambda: transfer.pull(channel, names, max_mb))
        if self.shell is not None:
            self.shell.user_ns.update(values)
        _say(f"Pulled {', '.join(names)} from session {name}")


def _raise_for(name: str, execution: Execution, publisher: OutputPublisher) -> None:
    if publisher.error is not None:
        raise remote_error(publisher.error)
    content = (execution.reply or {}).get("content") or {}
    if content.get("status") == "error":
        raise remote_error(content)
    if content.get("status") == "aborted":
        raise UsageError(f"VrunGPU: session {name} skipped the cell (an earlier request failed)")


def _answer_input(channel: KernelChannel, msg: dict[str, Any]) -> None:
    """The remote cell called input(): read the answer here and send it back."""
    content = msg.get("content") or {}
    prompt = str(content.get("prompt", ""))
    read = getpass.getpass if content.get("password") else input
    try:
        value = read(prompt)
    except EOFError:
        value = ""
    channel.send("input_reply", {"value": value}, channel="stdin", parent=msg.get("header"))


def _transfer(name: str, verb: str, action: Callable[[], T]) -> T:
    try:
        return action()
    except transfer.TransferError as exc:
        raise UsageError(f"%vrungpu {verb} ({name}): {exc}") from None
    except KernelEnded as exc:
        raise UsageError(f"%vrungpu {verb} ({name}): {exc}") from None


def _say(text: str, stream: Any = None) -> None:
    print(text, file=stream or sys.stdout, flush=True)

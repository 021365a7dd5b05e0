"""``vrungpu run``, ``submit``, ``logs``, ``status``, ``ls`` and ``cancel``: jobs on the gateway."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from vrungpu_magic.cli.common import client_of, json_option, show
from vrungpu_magic.cli.terminal import (
    STREAMS,
    Follower,
    OnInterrupt,
    TerminalView,
    exit_code_for,
)
from vrungpu_magic.client import ProgressCallback, VrunGPUClient
from vrungpu_magic.render import (
    fmt_duration,
    placement,
    progress_caption,
    task_table,
)

F = TypeVar("F", bound=Callable[..., Any])


def _parse_env(_ctx: click.Context, _param: click.Parameter, items: tuple[str, ...]) -> Any:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"takes KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def read_requirements(path: Path) -> list[str]:
    """A requirements file's lines, without blanks and comments."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


RUN_OPTIONS = [
    click.argument("target", type=click.Path(exists=True, path_type=Path), metavar="FILE|DIR"),
    click.option("--entry", metavar="F", help="The folder's (or .zip's) entry point [main.py]."),
    click.option("--gpus", type=click.IntRange(min=1), metavar="K", help="How many GPUs [1]."),
    click.option("--gpu", type=click.IntRange(min=0), metavar="N", help="Run on GPU N."),
    click.option("--cpu", is_flag=True, help="Run on a CPU slot."),
    click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        metavar="S",
        help="Seconds before the job is stopped.",
    ),
    click.option(
        "--env", multiple=True, metavar="K=V", callback=_parse_env, help="Set a variable (repeat)."
    ),
    click.option(
        "--requirements",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        metavar="F",
        help="A requirements file: the job runs in an environment with those packages.",
    ),
    click.option("--name", metavar="N", help="A name for the task."),
    click.option("--priority", type=int, metavar="P", help="Higher runs first."),
    click.argument("job_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- ARGS...]"),
]


def run_options(func: F) -> F:
    for option in reversed(RUN_OPTIONS):
        func = option(func)
    return func


def _options(params: dict[str, Any]) -> dict[str, Any]:
    """The run request's fields from the command's parameters."""
    given = {"gpus": params["gpus"] is not None, "gpu": params["gpu"] is not None}
    chosen = [name for name, yes in {**given, "cpu": params["cpu"]}.items() if yes]
    if len(chosen) > 1:
        raise click.UsageError(f"give one of --gpus, --gpu, --cpu (got --{', --'.join(chosen)})")
    requirements = params["requirements"]
    options = {
        "timeout": params["timeout"],
        "gpu_id": params["gpu"],
        "gpus": params["gpus"],
        "device": "cpu" if params["cpu"] else None,
        "name": params["name"],
        "priority": params["priority"],
        "env": params["env"] or None,
        "args": list(params["job_args"]) or None,
        "requirements": read_requirements(requirements) if requirements else None,
    }
    return {k: v for k, v in options.items() if v is not None}


def submit_job(
    client: VrunGPUClient,
    params: dict[str, Any],
    on_upload: ProgressCallback | None = None,
) -> str:
    """Send FILE|DIR with the options; the task id. A folder is zipped with its ignore files
    applied (`vrungpu_magic.archive`, as the magic does), a .py file runs as it is."""
    target: Path = params["target"]
    entry: str | None = params["entry"]
    options = _options(params)
    if target.is_dir():
        entry = entry or "main.py"
        if not (target / entry).is_file():
            raise click.UsageError(f"{entry} is not a file in {target} (see --entry)")
        return client.run_project(target, entry, on_progress=on_upload, **options)
    if target.suffix == ".py":
        if entry is not None:
            raise click.UsageError("--entry goes with a folder or a .zip")
        return client.run_file(target, **options)
    if target.suffix == ".zip":
        return client.run_project(target, entry or "main.py", on_progress=on_upload, **options)
    raise click.UsageError(f"{target}: give a .py file, a .zip or a folder")


def _tty(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


@click.command(context_settings={"ignore_unknown_options": False})
@run_options
@click.pass_context
def run(ctx: click.Context, **params: Any) -> int:
    """Run FILE|DIR on the gateway and follow it; exits with the job's return code.

    The job's stdout and stderr come to ours; Ctrl-C cancels the task (on a terminal it asks
    first; a second Ctrl-C cancels). Arguments after -- go to the job.
    """
    client = client_of(ctx)
    view = TerminalView(tty=_tty(sys.stderr))
    task_id = submit_job(client, params, view.upload)
    view.clear()
    view.note(f"Task {task_id} submitted")
    on_interrupt: OnInterrupt = "ask" if _tty(sys.stdin) else "cancel"
    follower = Follower(client, task_id, view, on_interrupt=on_interrupt)
    try:
        task = follower.run()
    except KeyboardInterrupt:
        click.echo(
            f"vrungpu: stopped following task {task_id}; see vrungpu status {task_id}", err=True
        )
        return 130
    return exit_code_for(task)


@click.command()
@run_options
@click.pass_context
def submit(ctx: click.Context, **params: Any) -> int:
    """Queue FILE|DIR on the gateway and print its task id (nothing else)."""
    click.echo(submit_job(client_of(ctx), params))
    return 0


@click.command()
@click.argument("task_id")
@click.option("-f", "--follow", is_flag=True, help="Follow the log until the task ends.")
@click.option("--tail", type=click.IntRange(min=0), metavar="N", help="Only the last N lines.")
@click.option(
    "--stream", type=click.Choice(["stdout", "stderr", "all"]), default="all", show_default=True
)
@click.pass_context
def logs(ctx: click.Context, task_id: str, follow: bool, tail: int | None, stream: str) -> int:
    """Print a task's log (stdout to stdout, stderr to stderr); -f follows it to the end."""
    client = client_of(ctx)
    streams = STREAMS if stream == "all" else (stream,)
    view = TerminalView(tty=False, show_status=False, streams=streams)
    offsets = dict.fromkeys(STREAMS, 0)
    if tail is not None or not follow:
        for name, part in client.log_slices(task_id, stream, tail=tail).items():
            view.text(name, part["content"] + ("" if follow else part.get("partial") or ""))
            offsets[name] = part["next_offset"]
    if follow:
        Follower(client, task_id, view, on_interrupt="stop", offsets=offsets).run()
    return 0


@click.command()
@click.argument("task_id")
@json_option
@click.pass_context
def status(ctx: click.Context, task_id: str, as_json: bool) -> int:
    """A task's status, placement, progress and result."""
    return show(client_of(ctx).get_task_status(task_id), as_json, _task_text)


def _task_text(task: dict[str, Any]) -> str:
    rows = [
        ("task", task.get("task_id")),
        ("name", task.get("name")),
        ("status", task.get("status")),
        ("where", placement(task)),
        ("progress", f"{float(task.get('progress') or 0):.0f}% {progress_caption(task)}".strip()),
        ("created", task.get("created_at")),
        ("duration", fmt_duration(task["duration"]) if task.get("duration") is not None else None),
        ("return code", task.get("return_code")),
        ("error", task.get("error")),
    ]
    return "\n".join(f"{k + ':':13} {v}" for k, v in rows if v not in (None, ""))


@click.command(name="ls")
@click.option("--status", "status_", metavar="S", help="Only tasks in this status.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, metavar="N")
@json_option
@click.pass_context
def list_tasks(ctx: click.Context, status_: str | None, limit: int, as_json: bool) -> int:
    """The latest tasks, newest first."""
    return show(client_of(ctx).list_tasks(status=status_, limit=limit), as_json, task_table)


@click.command()
@click.argument("task_id")
@json_option
@click.pass_context
def cancel(ctx: click.Context, task_id: str, as_json: bool) -> int:
    """Cancel a queued or running task."""
    result = client_of(ctx).cancel(task_id)
    return show(result, as_json, lambda r: f"Cancelled task {task_id} (now {r.get('status')})")


COMMANDS = [run, submit, logs, status, list_tasks, cancel]

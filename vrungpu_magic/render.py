"""Plain-text rendering of tasks, GPUs and tables, shared by the widgets and the text fallback.

Nothing here imports ipywidgets: plain IPython, nbclient runs and terminals use `TextTaskView`
and `format_gpus`; the ipywidgets panels in `vrungpu_magic.widgets` reuse the same captions.
"""

from __future__ import annotations

import html
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from vrungpu_gateway.protocol import TaskStatus

Task = dict[str, Any]
ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
TEXT_UPLOAD_MIN_BYTES = 1024 * 1024  # below this an upload gets one line, not a bar of lines


def clean_line(line: str) -> str:
    """A log line as shown: the last ``\\r`` segment (tqdm redraws), without ANSI colours."""
    line = line.rstrip("\n").rstrip("\r")
    return ANSI_RE.sub("", line.rsplit("\r", 1)[-1])


def status_of(task: Task | None) -> TaskStatus | None:
    try:
        return TaskStatus(task["status"]) if task else None
    except (KeyError, ValueError):
        return None


def is_terminal(task: Task | None) -> bool:
    status = status_of(task)
    return status is not None and status.is_terminal()


def fmt_duration(seconds: float | None) -> str:
    """``12.3 s`` under a minute, else ``m:ss`` or ``h:mm:ss``."""
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s"
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def fmt_bytes(size: float | None) -> str:
    if size is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def elapsed_s(task: Task, now: datetime | None = None) -> float | None:
    """Run time so far (or the final duration once the task has ended)."""
    if is_terminal(task) and task.get("duration") is not None:
        return float(task["duration"])
    started = parse_time(task.get("started_at"))
    if started is None:
        return None
    return max(0.0, ((now or datetime.now(UTC)) - started).total_seconds())


def eta_s(task: Task, elapsed: float | None) -> float | None:
    """Remaining time extrapolated from the progress, while running with 0 < progress < 100."""
    progress = float(task.get("progress") or 0)
    if status_of(task) is not TaskStatus.RUNNING or elapsed is None or not 0 < progress < 100:
        return None
    return elapsed * (100 - progress) / progress


def placement(task: Task) -> str:
    """Where the task runs or waits: ``GPU 0``, ``GPUs 0,1``, ``CPU``, ``queued (#2)``."""
    ids = task.get("gpu_ids") or ([] if task.get("gpu_id") is None else [task["gpu_id"]])
    if ids:
        return ("GPU " if len(ids) == 1 else "GPUs ") + ",".join(str(i) for i in ids)
    if task.get("queue_position"):
        return f"queued (#{task['queue_position']})"
    if task.get("device") == "cpu":
        return "CPU"
    return "waiting for a slot"


def progress_caption(task: Task, now: datetime | None = None) -> str:
    """``Epoch 2/5 · 0:12 elapsed · ETA 0:18`` (the parts that are known)."""
    parts = [str(task["progress_message"])] if task.get("progress_message") else []
    elapsed = elapsed_s(task, now)
    if elapsed is not None:
        parts.append(f"{fmt_duration(elapsed)} elapsed")
    eta = eta_s(task, elapsed)
    if eta is not None:
        parts.append(f"ETA {fmt_duration(eta)}")
    return " · ".join(parts)


def final_line(task: Task) -> str:
    """The one-line verdict: status, duration, return code and the error if any."""
    status = status_of(task)
    head = f"Task {task.get('task_id')} {task.get('status')}"
    duration = fmt_duration(task.get("duration")) if task.get("duration") is not None else None
    if status is TaskStatus.COMPLETED:
        head += f" in {duration}" if duration else ""
    elif duration:
        head += f" after {duration}"
    if task.get("return_code") is not None:
        head += f" (return code {task['return_code']})"
    if status is not TaskStatus.COMPLETED and task.get("error"):
        head += f": {task['error']}"
    return head


class TextTaskView:
    """The text fallback of the task panel: status and progress as lines, logs as they come.

    Job stdout goes to ``sys.stdout`` and job stderr to ``sys.stderr`` (looked up at each
    write, so IPython's capture and pytest's capsys see it).
    """

    def __init__(self) -> None:
        self._shown: tuple[Any, ...] = ()
        self._step = 0
        self._upload_step = -1

    def bind(self, task_id: str, *, on_cancel: Callable[[], Any] | None = None) -> None:
        """Text has no Cancel button: interrupt the cell instead."""

    def _say(self, text: str) -> None:
        print(text, file=sys.stdout, flush=True)

    def show_upload(self, sent: int, total: int) -> None:
        if total < TEXT_UPLOAD_MIN_BYTES:
            if self._upload_step < 0:
                self._upload_step = 100
                self._say(f"Uploading the project ({fmt_bytes(total)})")
            return
        step = int(sent * 100 / max(total, 1)) // 20 * 20
        if step > self._upload_step:
            self._upload_step = step
            self._say(f"Uploading the project: {step}% of {fmt_bytes(total)}")

    def show_task(self, task: Task) -> None:
        key = (task.get("status"), placement(task))
        if key != self._shown and not is_terminal(task):  # `finish` says how it ended
            self._shown = key
            self._say(f"Task {task.get('task_id')} {task.get('status')} · {placement(task)}")
        # a line per quarter (elapsed, ETA): the job's own output carries each progress line
        progress = float(task.get("progress") or 0)
        step = int(progress // 25)
        if status_of(task) is TaskStatus.RUNNING and step > self._step and progress < 100:
            self._step = step
            self._say(f"[{float(task.get('progress') or 0):3.0f}%] {progress_caption(task)}")

    def add_output(self, stream: str, lines: Sequence[str]) -> None:
        target = sys.stderr if stream == "stderr" else sys.stdout
        text = "".join(clean_line(line) + "\n" for line in lines)
        target.write(text)
        target.flush()

    def note(self, text: str) -> None:
        self._say(text)

    def finish(self, task: Task) -> None:
        self._say(final_line(task))

    def abandon(self, reason: str) -> None:
        """Nothing to tidy: the cell's error says why there is no task."""


# -- tables --------------------------------------------------------------------------------------

Column = tuple[str, Callable[[dict[str, Any]], Any]]


class Table:
    """Rows shown as an HTML table in Jupyter and as aligned text elsewhere."""

    def __init__(self, rows: list[dict[str, Any]], columns: Sequence[Column], empty: str) -> None:
        self.rows = rows
        self.columns = list(columns)
        self.empty = empty

    def _cells(self) -> list[list[str]]:
        return [
            ["" if (v := get(row)) is None else str(v) for _, get in self.columns]
            for row in self.rows
        ]

    def __repr__(self) -> str:
        if not self.rows:
            return self.empty
        head = [name for name, _ in self.columns]
        body = self._cells()
        widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *body]
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(line.rstrip() for line in lines)

    def _repr_html_(self) -> str:
        if not self.rows:
            return f"<p>{html.escape(self.empty)}</p>"
        head = "".join(f"<th>{html.escape(name)}</th>" for name, _ in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
            for row in self._cells()
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Any:
        return iter(self.rows)


def _short_time(value: str | None) -> str | None:
    stamp = parse_time(value)
    return stamp.astimezone().strftime("%Y-%m-%d %H:%M:%S") if stamp else None


TASK_COLUMNS: list[Column] = [
    ("task_id", lambda t: t.get("task_id")),
    ("name", lambda t: t.get("name")),
    ("status", lambda t: t.get("status")),
    ("where", placement),
    ("progress", lambda t: f"{float(t.get('progress') or 0):.0f}%"),
    ("created", lambda t: _short_time(t.get("created_at"))),
    ("duration", lambda t: fmt_duration(t["duration"]) if t.get("duration") is not None else None),
    ("error", lambda t: t.get("error")),
]

MODEL_COLUMNS: list[Column] = [
    ("model_id", lambda m: m.get("model_id")),
    ("name", lambda m: m.get("name")),
    ("version", lambda m: m.get("version")),
    ("framework", lambda m: m.get("framework")),
    ("status", lambda m: m.get("status")),
    ("size", lambda m: fmt_bytes(m["file_size"]) if m.get("file_size") is not None else None),
    ("created", lambda m: _short_time(m.get("created_at"))),
]


def task_table(tasks: list[Task]) -> Table:
    return Table(tasks, TASK_COLUMNS, "No tasks.")


def model_table(models: list[dict[str, Any]]) -> Table:
    return Table(models, MODEL_COLUMNS, "No models registered.")


# -- GPUs ----------------------------------------------------------------------------------------


def gpu_holders(info: dict[str, Any], pool: dict[str, Any]) -> dict[int, str]:
    """GPU index -> id of the task holding it (from the devices, else the pool's allocations)."""
    holders = {d["index"]: d["task_id"] for d in info.get("devices", []) if d.get("task_id")}
    for task_id, gpu_ids in (pool.get("allocations") or {}).items():
        for index in gpu_ids:
            holders.setdefault(int(index), task_id)
    return holders


def text_bar(fraction: float, width: int = 20) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def format_gpus(info: dict[str, Any], pool: dict[str, Any]) -> str:
    """One line per GPU: utilisation and memory bars and the task holding it."""
    devices = info.get("devices") or []
    if not devices:
        reason = f" ({info['error']})" if info.get("error") else ""
        return f"No GPUs on this host{reason}; tasks run on CPU slots."
    holders = gpu_holders(info, pool)
    lines = []
    for dev in devices:
        util = float(dev.get("utilization_percent") or 0)
        total, used = dev.get("memory_total_mb") or 0, dev.get("memory_used_mb") or 0
        holder = holders.get(dev["index"])
        lines.append(
            f"GPU {dev['index']}  {dev.get('name', '?')}"
            f"  util {text_bar(util / 100)} {util:3.0f}%"
            f"  mem {text_bar(used / total if total else 0)} {used}/{total} MB"
            f"  {'task ' + holder if holder else 'free'}"
        )
    return "\n".join(lines)

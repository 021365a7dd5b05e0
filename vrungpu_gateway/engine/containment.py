"""Finding and killing every process of one job: cgroup v2 where we may, else the process tree.

A job's processes are found three ways, and the union is what gets signalled:
- its cgroup (``vrungpu/<task_id>`` under a writable cgroup v2 mount), which no process can
  leave by ``setsid`` or double-forking;
- the descendants of its shim, which is a child subreaper, so orphans are reparented to it;
- the marker ``VRUNGPU_TASK_ID=<task_id>`` in a process's environment, for whatever is left
  when the shim itself is gone.
Zombies count as gone: PID 1 here may leave them unreaped for a while.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from vrungpu_gateway.engine.jobuser import TASK_IDS

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
KILL_UID_TRIES = 50
KILL_UID_ROUNDS = 3  # kill(-1) sent at least this often before a scan may say none is left
CGROUP_MOUNTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
CGROUP_PARENT = "vrungpu"


def become_subreaper() -> bool:
    """Orphaned descendants are reparented to us instead of PID 1 (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def cgroup_root() -> Path | None:
    """A cgroup v2 hierarchy we may create groups in, or None."""
    for mount in CGROUP_MOUNTS:
        if not (mount / "cgroup.controllers").exists():  # v1 hierarchies have none
            continue
        parent = mount / CGROUP_PARENT
        try:
            parent.mkdir(exist_ok=True)
        except OSError:
            continue
        if os.access(parent, os.W_OK):
            return parent
    return None


def create_cgroup(task_id: str) -> Path | None:
    root = cgroup_root()
    if root is None:
        return None
    group = root / task_id
    try:
        group.mkdir(exist_ok=True)
    except OSError as exc:
        log.info("task %s: no cgroup (%s); using the process tree", task_id, exc)
        return None
    return group


def remove_cgroup(group: Path | None) -> None:
    if group is not None:
        # still populated by an unkillable process: leave it for the next start
        with contextlib.suppress(OSError):
            group.rmdir()


def _stat(pid: int | str) -> list[bytes] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state first), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2 :].split()


def is_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in (b"Z", b"X")


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (identifies it across pid reuse)."""
    fields = _stat(pid)
    return int(fields[19]) if fields is not None else None


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every live process: one pass over /proc."""
    table = {}
    for entry in os.scandir("/proc"):
        fields = _stat(entry.name) if entry.name.isdigit() else None
        if fields is not None and fields[0] not in (b"Z", b"X"):
            table[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return table


def _tree_and_group(root: int | None, pgid: int | None) -> set[int]:
    """Descendants of ``root`` and members of process group ``pgid``, from one table."""
    table = _process_table()
    found = {pid for pid, (_, group) in table.items() if pgid and group == pgid}
    if root is None:
        return found
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    todo = list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def _live_where(name: str, match: Callable[[bytes], bool]) -> set[int]:
    """Live processes whose ``/proc/PID/<name>`` file ``match`` accepts."""
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            data = Path(f"/proc/{entry.name}/{name}").read_bytes()
        except OSError:
            continue
        if match(data) and is_alive(int(entry.name)):
            found.add(int(entry.name))
    return found


def marked(task_id: str) -> set[int]:
    """Processes whose environment carries this task's marker."""
    marker = f"VRUNGPU_TASK_ID={task_id}".encode()
    return _live_where("environ", lambda environ: marker in environ.split(b"\0"))


def owned_by(uid: int) -> set[int]:
    """Live processes whose real uid is ``uid`` (a task's own uid: every one of them is the
    task's, however it left the group and whatever it did to its environment)."""
    wanted = str(uid).encode()
    return _live_where(
        "status", lambda status: status.split(b"\nUid:", 1)[-1].split()[:1] == [wanted]
    )


def kill_uid(uid: int, gid: int) -> None:
    """SIGKILL every process of ``uid`` at once: ``kill(-1)`` sent as that uid, which the kernel
    delivers to all of them while none can fork (a process that keeps forking to a new pid
    outruns a kill by pids), repeated until none is left. OSError if some survive. Only a
    task's own uid (``TASK_IDS``): an account's uid (``nobody``) has other processes too."""
    if uid not in TASK_IDS:
        return
    for attempt in range(KILL_UID_TRIES):
        # a process that hops pids may be missed by a scan of /proc: kill first, then look
        if attempt >= KILL_UID_ROUNDS and not owned_by(uid):
            return
        pid = os.fork()
        if pid == 0:  # only system calls here: we may have been forked from a threaded process
            try:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        time.sleep(0.01)
    if owned_by(uid):
        raise OSError(f"processes of uid {uid} survive SIGKILL")


def cgroup_members(group: Path | None) -> set[int]:
    if group is None:
        return set()
    try:
        text = (group / "cgroup.procs").read_text()
    except OSError:
        return set()
    return {int(pid) for pid in text.split() if is_alive(int(pid))}


def job_processes(
    task_id: str, *, shim_pid: int | None, group: Path | None, job_pgid: int | None = None
) -> set[int]:
    """Every live process of the job (never the shim itself, nor the caller).

    The shim (``shim_pid`` given) finds them all as its descendants, being their subreaper;
    without a shim, the environment marker is read too (one more pass over /proc).
    """
    found = cgroup_members(group) | _tree_and_group(shim_pid, job_pgid)
    if shim_pid is None:
        found |= marked(task_id)
    found.discard(os.getpid())
    if shim_pid is not None:
        found.discard(shim_pid)
    return {pid for pid in found if is_alive(pid)}


def signal_all(pids: set[int], sig: signal.Signals, group: Path | None = None) -> None:
    if sig is signal.SIGKILL and group is not None:
        # cgroup.kill needs Linux 5.14; the signals one by one below do it elsewhere
        with contextlib.suppress(OSError):
            (group / "cgroup.kill").write_text("1")
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def kill_leftovers(
    task_id: str,
    *,
    shim_pid: int | None = None,
    group: Path | None = None,
    job_pgid: int | None = None,
    uid: int | None = None,
) -> int:
    """SIGKILL whatever is left of a job, until nothing is (bounded); how many were found.
    ``uid``: the job's own uid, whose every process is the job's."""

    def find() -> set[int]:
        return job_processes(task_id, shim_pid=shim_pid, group=group, job_pgid=job_pgid)

    if uid is not None:  # the task's own uid: every process of it ends, however it hides
        with contextlib.suppress(OSError):
            kill_uid(uid, uid)
    found = find()
    total = len(found)
    deadline = time.monotonic() + 5.0
    while found and time.monotonic() < deadline:
        signal_all(found, signal.SIGKILL, group)
        time.sleep(0.02)
        found = find()
    if found:
        log.warning("task %s: processes %s survive SIGKILL", task_id, sorted(found))
    return total

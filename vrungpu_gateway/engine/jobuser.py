"""Who jobs run as (``--job-user``): the choice at start, the privilege drop, the workspace.

A gateway running as root runs its jobs, remote kernels and model workers as an
unprivileged user, so that a job cannot read the token, the database, the logs or other
tasks' workspaces. Each of them gets a uid (and gid) of its own (``JobUser.for_task``), with
the rights of the ``--job-user`` it derives from and nothing more: two jobs running at once
cannot reach each other through ``/proc`` (a working directory, memory, signals) as they
could under one shared uid. The shim (root) forks the job and the job child alone drops to that user
(``drop``), after it joined its cgroup; the shim keeps the cgroup and the log files. The
workspace is the job user's while the job runs (``hand_over``) and root's again after it
(``take_back``), so a later job of the same user cannot open it.

``--job-user``: ``auto`` (default) is ``nobody`` when the gateway runs as root and the job
interpreter runs as ``nobody`` (and the data dir is reachable), else the gateway's own user,
said loudly at start; ``NAME`` insists (refused with one line when it cannot work);
``gateway`` always runs jobs as the gateway's user.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

AUTO = "auto"
SAME = "gateway"  # jobs run as the gateway's own user
DEFAULT_NAME = "nobody"
# Per-task uids and gids: 2^30 of them above every account's, so two of 100 tasks running at
# once share one with a chance of about 5 in a million. Needs a full uid map (a container's
# user namespace that maps only 65,536 ids refuses them: the job fails to start, saying so).
TASK_IDS = range(2**30, 2**31)
CHECK_TIMEOUT_S = 30.0
PACKAGE_FILE = str(Path(__file__).resolve())  # kernels and model workers run files beside it


@dataclass(frozen=True)
class JobUser:
    name: str
    uid: int
    gid: int
    home: str  # an existing folder, else "" (HOME is then the job's workspace)

    @classmethod
    def named(cls, name: str) -> JobUser:
        """The passwd entry of ``name`` (a name or a numeric uid); ValueError if none."""
        try:
            entry = pwd.getpwnam(name) if not name.isdigit() else pwd.getpwuid(int(name))
        except KeyError:
            raise ValueError(f"--job-user {name}: no such user on this host") from None
        home = entry.pw_dir if os.path.isdir(entry.pw_dir) else ""
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, home)

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "uid": self.uid, "gid": self.gid, "home": self.home}

    def for_task(self, task_id: str) -> JobUser:
        """The uid and gid of one task, job, kernel or model worker: the same for the same id
        (a restarted gateway finds it again), drawn from ``TASK_IDS`` ids that no account
        holds, so it owns nothing but what is handed to it. Its name stays ours (USER)."""
        digest = int.from_bytes(hashlib.sha256(task_id.encode()).digest()[:8], "big")
        uid = TASK_IDS.start + digest % len(TASK_IDS)
        return JobUser(self.name, uid, uid, "")


def drop(user: JobUser | None) -> None:
    """Become ``user`` for good (no supplementary groups, real and saved ids too). Called in
    the job's own process, before its code runs; a failure must stop the job."""
    if user is None:
        return
    os.setgroups([])
    os.setgid(user.gid)
    os.setuid(user.uid)
    if os.getuid() != user.uid or os.geteuid() != user.uid:
        raise OSError(f"could not become the job user {user.name}")


def environment(env: dict[str, str], user: JobUser | None, workspace: str) -> dict[str, str]:
    """The job's environment as ``user`` sees it: its HOME, USER and LOGNAME."""
    if user is None:
        return env
    home = user.home if user.home and os.access(user.home, os.W_OK) else workspace
    return {**env, "HOME": home, "USER": user.name, "LOGNAME": user.name}


def hand_over(workspace: str, user: JobUser | None) -> None:
    """Give the job user its workspace, every file in it, for the job's run (blocking)."""
    if user is None:
        return
    os.lchown(workspace, user.uid, user.gid)
    os.chmod(workspace, 0o700)
    for top, dirs, files in os.walk(workspace):
        for name in (*dirs, *files):
            os.lchown(os.path.join(top, name), user.uid, user.gid)


def share_read(folder: Path, user: JobUser | None) -> None:
    """Let the job user read ``folder`` (a model for its worker), not change it: the
    gateway's, folders 0755 and files 0644 (blocking). ``models/`` itself stays 0711, so
    only a process that knows the model's id finds it."""
    if user is None:
        return
    os.chmod(folder, 0o755)
    for top, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(top, name), 0o755)
        for name in files:
            path = os.path.join(top, name)
            if not os.path.islink(path):
                os.chmod(path, 0o644)


def take_back(workspace: str, user: JobUser | None) -> None:
    """Close the workspace to the job user once the job ended: the folder becomes the
    gateway's again (0700), so no later job of that user can enter it. Its files stay
    the job user's (unreachable now); the gateway reads them as root."""
    if user is None:
        return
    try:
        os.lchown(workspace, os.getuid(), os.getgid())
        os.chmod(workspace, 0o700)
    except FileNotFoundError:
        pass


@dataclass(frozen=True)
class Isolation:
    """What ``choose`` decided: the job user (None: the gateway's own) and the line to log."""

    user: JobUser | None
    line: str
    loud: bool = False  # a root gateway whose jobs run as root: a warning

    def announce(self) -> None:
        (log.warning if self.loud else log.info)("%s", self.line)


def choose(setting: str | None, *, python: str, reach: Path) -> Isolation:
    """The job user for ``--job-user setting`` and one line that says what jobs can see.
    ``reach``: a folder the job user must get to (the data dir). ValueError (one line) when
    a named user cannot work."""
    setting = (setting or AUTO).strip()
    me = pwd.getpwuid(os.getuid()).pw_name
    if setting == SAME or (setting != AUTO and _is_me(setting)):
        return Isolation(None, _same_user_line(me, asked=True))
    if os.getuid() != 0:
        if setting != AUTO:
            raise ValueError(f"--job-user {setting} needs a gateway running as root (it is {me})")
        return Isolation(None, _same_user_line(me, asked=False))
    user = JobUser.named(DEFAULT_NAME if setting == AUTO else setting)
    problem = usable(user.for_task("probe"), python=python, reach=reach)  # as a task runs
    if problem is None:
        return Isolation(
            user,
            f"jobs and kernels run with {user.name}'s rights, each as a uid of its own (from "
            f"{TASK_IDS.start}): they cannot read the token, the database, the logs or other "
            "tasks' workspaces, nor reach each other's processes",
        )
    if setting != AUTO:
        raise ValueError(f"--job-user {setting}: {problem}")
    return Isolation(
        None,
        f"JOBS RUN AS ROOT: {problem}; jobs can read the token, the database and every "
        f"task's files. Give a --python that {user.name} can run (e.g. /usr/bin/python3) "
        f"and a data dir it can reach, or --job-user {SAME} to silence this",
        loud=True,
    )


def _is_me(setting: str) -> bool:
    try:
        return JobUser.named(setting).uid == os.getuid()
    except ValueError:
        return False


def _same_user_line(me: str, *, asked: bool) -> str:
    why = "as asked (--job-user gateway)" if asked else "(the gateway does not run as root)"
    return (
        f"jobs run as the gateway's user {me} {why}: they can read whatever {me} can, "
        "the token and the database included"
    )


def usable(user: JobUser, *, python: str, reach: Path) -> str | None:
    """Why ``user`` cannot run jobs with ``python`` in ``reach``, or None when it can: the
    interpreter is started as that user, which then looks at the folder."""
    probe = "import os, sys; open(sys.argv[2]).close(); os.stat(sys.argv[1])"
    try:
        done = subprocess.run(  # noqa: S603 - our interpreter, our probe
            [python, "-c", probe, str(reach), PACKAGE_FILE],
            cwd="/",
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=CHECK_TIMEOUT_S,
            preexec_fn=lambda: drop(user),
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{user.name} cannot run {python} ({_first_line(exc)})"
    if done.returncode == 0:
        return None
    text = done.stderr.decode(errors="replace")
    if "PermissionError" in text and PACKAGE_FILE in text:
        return (
            f"{user.name} cannot read the gateway's package at {Path(PACKAGE_FILE).parent} "
            "(kernels and model workers start from it)"
        )
    if "PermissionError" in text and str(reach) in text:
        return f"{user.name} cannot reach the data dir {reach} (a parent folder is closed to it)"
    return f"{user.name} cannot run {python} ({_first_line(text) or done.returncode})"


def _first_line(what: object) -> str:
    lines = [ln for ln in str(what).strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""

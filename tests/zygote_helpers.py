"""A stand-in shim for the zygote tests, and a harness that calls launch_fork directly.

``fake_shim`` reads a tiny JSON spec (argv, cwd, env, cgroup_procs, stdout, stderr, pid, result),
launches the job with output to the two files, publishes the job's pid, waits for it and writes
``{"returncode": N}`` (or ``{"error": "..."}`` when the launch failed) to ``result``.

``python -m tests.zygote_helpers [--preload a,b] SPEC`` runs it with ``launch_fork`` in a fresh
interpreter that first imports the preload modules: launch_fork tested without a zygote.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
from pathlib import Path
from typing import Any

from vrungpu_gateway.engine.launch import Launch, LaunchSpec, exit_code


def write_json(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    Path(tmp).write_text(json.dumps(data))
    os.replace(tmp, path)


def fake_shim(spec_path: str, *, launch: Launch) -> int:
    """Run one job with ``launch`` and record how it ended."""
    spec = json.loads(Path(spec_path).read_text())
    job = LaunchSpec(spec["argv"], spec["cwd"], spec["env"], spec.get("cgroup_procs"))
    with open(spec["stdout"], "wb") as out, open(spec["stderr"], "wb") as err:
        try:
            pid = launch(job, out.fileno(), err.fileno())
        except OSError as exc:
            write_json(spec["result"], {"error": str(exc)})
            return 0
    write_json(spec["pid"], {"pid": pid})
    _, status = os.waitpid(pid, 0)
    write_json(spec["result"], {"returncode": exit_code(status)})
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preload", default="")
    parser.add_argument("spec")
    args = parser.parse_args()
    for name in filter(None, args.preload.split(",")):
        importlib.import_module(name)
    from vrungpu_gateway.engine.inprocess import launch_fork

    return fake_shim(args.spec, launch=launch_fork)


if __name__ == "__main__":
    raise SystemExit(main())

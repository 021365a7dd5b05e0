"""The entry file of a kernel process: ``python -u kernel_entry.py -f CONNECTION_FILE``.

A kernel runs as a job under its shim, started cold or forked from the warm zygote; the zygote
runs entry *files* (``launch_fork`` takes ``[python, "-u", ENTRY, *args]``), so this file is
what ``python -m ipykernel_launcher`` would be. ``sys.argv`` is already ``[this file, "-f",
PATH]`` when it runs.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # Like ipykernel_launcher: the entry's folder (the gateway's package) must not shadow
    # the user's imports from the workspace.
    if sys.path and sys.path[0] and __file__.startswith(sys.path[0]):
        del sys.path[0]
    from ipykernel import kernelapp

    kernelapp.launch_new_instance()

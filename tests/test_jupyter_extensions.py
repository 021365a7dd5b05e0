"""What `pip install` registers with Jupyter: the server extension and the prebuilt sidebar."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("jupyter_server")


def jupyter(*args: str) -> str:
    """``jupyter ARGS`` in this environment: its output (both streams), colours off."""
    env = {**os.environ, "NO_COLOR": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "jupyter", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)


def test_server_extension_is_listed_enabled_and_valid() -> None:
    listed = jupyter("server", "extension", "list")
    assert re.search(r"^\s*vrungpu_magic enabled$", listed, re.MULTILINE), listed
    assert re.search(r"^\s*vrungpu_magic \S+ OK$", listed, re.MULTILINE), listed


def test_prebuilt_sidebar_is_listed_enabled_ok() -> None:
    listed = jupyter("labextension", "list")
    assert re.search(r"vrungpu-labext v\S+ enabled OK", listed), listed

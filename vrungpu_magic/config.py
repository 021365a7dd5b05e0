"""Where the notebook side finds its gateway: env vars, then the user's config file.

One home for the connection settings shared by the magic, the client's defaults and the
JupyterLab server extension. Precedence: explicit arguments, then ``VRUNGPU_URL`` /
``VRUNGPU_TOKEN``, then the JSON file ``$VRUNGPU_CONFIG`` or
``$XDG_CONFIG_HOME/vrungpu/config.json`` (default ``~/.config/vrungpu/config.json``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:9825"


@dataclass(frozen=True)
class Connection:
    url: str
    token: str | None


def config_path() -> Path:
    """The user's config file (it may not exist)."""
    explicit = os.environ.get("VRUNGPU_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "vrungpu" / "config.json"


def _read_file() -> dict[str, str]:
    path = config_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in data.items() if k in ("url", "token") and v}


def load_connection(url: str | None = None, token: str | None = None) -> Connection:
    """Resolve the gateway URL and token from arguments, environment and config file."""
    stored = _read_file()
    url = url or os.environ.get("VRUNGPU_URL") or stored.get("url") or DEFAULT_URL
    token = token or os.environ.get("VRUNGPU_TOKEN") or stored.get("token")
    return Connection(url=url.rstrip("/"), token=token or None)


def save_connection(conn: Connection) -> Path:
    """Write the connection to the user's config file, readable by the user alone."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"url": conn.url, **({"token": conn.token} if conn.token else {})}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh)
    return path

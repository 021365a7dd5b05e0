"""Where the notebook side finds its gateway: env vars, then the user's config file.

One home for the connection settings shared by the magic, the client's defaults and the
JupyterLab server extension. Precedence: explicit arguments, then ``VRUNGPU_URL`` /
``VRUNGPU_TOKEN`` / ``VRUNGPU_CA_BUNDLE``, then the JSON file ``$VRUNGPU_CONFIG`` or
``$XDG_CONFIG_HOME/vrungpu/config.json`` (default ``~/.config/vrungpu/config.json``).
``ca_bundle``: the CA certificates (PEM) that an ``https://`` gateway's certificate is checked
against, for a gateway with a self-signed or private CA (default: the system's).
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
    ca_bundle: str | None = None  # None: the system's CA certificates

    @property
    def verify(self) -> str | bool:
        """What requests' ``verify=`` takes."""
        return self.ca_bundle or True


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
    return {k: str(v) for k, v in data.items() if k in ("url", "token", "ca_bundle") and v}


def load_connection(
    url: str | None = None, token: str | None = None, ca_bundle: str | None = None
) -> Connection:
    """Resolve the gateway URL, token and CA bundle from arguments, environment and config
    file."""
    stored = _read_file()
    url = url or os.environ.get("VRUNGPU_URL") or stored.get("url") or DEFAULT_URL
    token = token or os.environ.get("VRUNGPU_TOKEN") or stored.get("token")
    ca_bundle = ca_bundle or os.environ.get("VRUNGPU_CA_BUNDLE") or stored.get("ca_bundle")
    return Connection(url=url.rstrip("/"), token=token or None, ca_bundle=ca_bundle or None)


def save_connection(conn: Connection) -> Path:
    """Write the connection to the user's config file, readable by the user alone."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"url": conn.url, **({"token": conn.token} if conn.token else {})}
    if conn.ca_bundle:
        payload["ca_bundle"] = str(Path(conn.ca_bundle).expanduser().resolve())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh)
    return path

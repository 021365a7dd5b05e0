"""The gateway's settings: one dataclass, filled from CLI flags and VRUNGPU_* variables."""

from __future__ import annotations

import ipaddress
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}
ON_STOP_CHOICES = ("leave", "drain", "kill")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 9825
    data_dir: Path = Path("./data")
    gpus: str = "auto"
    cpu_slots: int = 2
    token: str | None = None
    no_auth: bool = False
    metrics_public: bool = False  # GET /metrics without a token (for a scraper on the LAN)
    kill_grace_s: float = 10.0
    python: str = sys.executable
    default_timeout_s: float = 3600.0
    max_upload_mb: int = 10240
    allow_origins: list[str] = field(default_factory=list)
    max_warm_models: int = 2
    worker_idle_timeout_s: float = 600.0
    on_stop: str = "leave"  # leave | drain | kill: running jobs when the gateway stops
    max_log_mb: float = 1024.0
    preload: list[str] = field(default_factory=list)
    kernel_idle_timeout_s: float = 3600.0  # 0: kernels are never culled
    kernel_queue_timeout_s: float = 30.0
    max_kernels: int = 8
    prespawn_kernels: int = 0
    env_cache_mb: float = 20480.0  # per-job environments (requirements) kept under data/envs
    uv: str | None = None  # the uv binary; None: the one installed with the gateway
    # -- security (users, browser safety, secrets, TLS) -----------------------------------
    users_file: Path | None = None  # JSON {"users": [{"name", "token"|"token_sha256", "admin"}]}
    allow_hosts: list[str] = field(default_factory=list)  # Host names served beyond loopback
    token_file: Path | None = None  # read the main token from here (never on a command line)
    job_user: str | None = None  # None: the documented default (see cli --job-user)
    certfile: Path | None = None
    keyfile: Path | None = None
    # -- limits, each checked before anything is written or held --------------------------
    max_body_mb: float = 16.0  # a JSON request body
    max_code_kb: int = 1024  # `code` of a run request
    max_env_vars: int = 256
    max_env_kb: int = 256  # all env names and values together
    max_args: int = 1024
    max_args_kb: int = 256  # all args together
    max_progress_chars: int = 1000  # a progress message as stored and sent
    max_unpack_mb: int = 20480  # a zip's total uncompressed size
    max_zip_ratio: float = 200.0  # uncompressed / compressed size of a whole zip
    max_zip_members: int = 20000
    # -- scale-out --------------------------------------------------------------------------
    backend: str = "local"  # local | ray
    ray_address: str = "auto"
    db_url: str | None = None  # None: SQLite at DATA_DIR/vrungpu.db

    def check(self) -> None:
        """Refuse unsafe or impossible combinations with one clear line."""
        if self.no_auth and not is_loopback(self.host):
            raise ValueError(
                f"--no-auth is refused on a non-loopback address ({self.host}); "
                "use a token when serving a network"
            )
        if self.cpu_slots < 0:
            raise ValueError("--cpu-slots must be >= 0")
        if self.kill_grace_s < 0:
            raise ValueError("--kill-grace must be >= 0")
        if self.max_warm_models < 1:
            raise ValueError("--max-warm-models must be >= 1")
        if self.worker_idle_timeout_s <= 0:
            raise ValueError("--worker-idle-timeout must be > 0")
        if self.on_stop not in ON_STOP_CHOICES:
            raise ValueError(f"--on-stop must be one of {', '.join(ON_STOP_CHOICES)}")
        if self.max_log_mb <= 0:
            raise ValueError("--max-log-mb must be > 0")
        if self.kernel_idle_timeout_s < 0:
            raise ValueError("--kernel-idle-timeout must be >= 0 (0: never)")
        if self.kernel_queue_timeout_s <= 0:
            raise ValueError("--kernel-queue-timeout must be > 0")
        if self.max_kernels < 1:
            raise ValueError("--max-kernels must be >= 1")
        if self.env_cache_mb <= 0:
            raise ValueError("--env-cache-mb must be > 0")
        if self.prespawn_kernels < 0:
            raise ValueError("--prespawn-kernels must be >= 0")
        if not (0 <= self.port <= 65535):
            raise ValueError("--port must be between 0 and 65535")
        self._check_secrets()
        self._check_limits()

    def _check_limits(self) -> None:
        for flag, value in (
            ("--max-body-mb", self.max_body_mb),
            ("--max-code-kb", self.max_code_kb),
            ("--max-env-kb", self.max_env_kb),
            ("--max-args-kb", self.max_args_kb),
            ("--max-progress-chars", self.max_progress_chars),
            ("--max-unpack-mb", self.max_unpack_mb),
            ("--max-zip-ratio", self.max_zip_ratio),
            ("--max-zip-members", self.max_zip_members),
            ("--max-upload-mb", self.max_upload_mb),
        ):
            if not 0 < value < float("inf"):
                raise ValueError(f"{flag} must be a number > 0")
        for flag, count in (("--max-env-vars", self.max_env_vars), ("--max-args", self.max_args)):
            if count < 0:
                raise ValueError(f"{flag} must be >= 0")

    def _check_secrets(self) -> None:
        if self.token_file is not None:
            if self.token:
                raise ValueError("give the token once: --token (VRUNGPU_TOKEN) or --token-file")
            read_token_file(self.token_file)
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("--certfile and --keyfile go together: give both for TLS")
        for flag, path in (("--certfile", self.certfile), ("--keyfile", self.keyfile)):
            if path is not None and not os.access(path, os.R_OK):
                raise ValueError(f"{flag} {path}: not a readable file")


def read_token_file(path: Path) -> str:
    """The token in ``path`` (stripped); ValueError, one line, when the file is missing,
    empty, or open to its group or to others (a token there is no secret)."""
    try:
        mode = path.stat().st_mode
        token = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"--token-file {path}: {exc.strerror or exc}") from None
    if mode & 0o077:
        raise ValueError(
            f"--token-file {path} is readable by its group or others (mode {mode & 0o777:o}); "
            f"chmod 600 {path}"
        )
    if not token:
        raise ValueError(f"--token-file {path} is empty")
    return token


def resolve_token(config: GatewayConfig, data_dir: Path) -> str | None:
    """The main token: none with --no-auth, else --token-file, --token, or DATA_DIR/token."""
    if config.no_auth:
        return None
    if config.token_file is not None:
        return read_token_file(config.token_file)
    return config.token or load_or_create_token(data_dir)


def load_or_create_token(data_dir: Path) -> str:
    """The token saved under the data dir, created (256 random bits) on first start."""
    path = data_dir / "token"
    try:
        token = path.read_text().strip()
        if token:
            os.chmod(path, 0o600)  # a data dir from before modes were enforced
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token

"""The `vrungpu-gateway` command: flags with VRUNGPU_* twins, start-up banner, clean stop."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import ssl
import sys
from pathlib import Path

import tornado.httpserver
import tornado.netutil

from vrungpu_gateway import __version__, logmask
from vrungpu_gateway.api.bodylimit import SLACK_BYTES, BodyLimit
from vrungpu_gateway.app import make_app
from vrungpu_gateway.config import ON_STOP_CHOICES, GatewayConfig
from vrungpu_gateway.service import Gateway
from vrungpu_gateway.store import commands as db_commands

log = logging.getLogger("vrungpu_gateway")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"VRUNGPU_{name}", default)


def build_parser() -> argparse.ArgumentParser:
    d = GatewayConfig()
    p = argparse.ArgumentParser(
        prog="vrungpu-gateway",
        description="Run Python jobs from notebooks on this host's GPUs. Every flag has a "
        "VRUNGPU_* environment twin (e.g. --data-dir and VRUNGPU_DATA_DIR). "
        "`vrungpu-gateway db upgrade|current` manages the database schema.",
    )
    p.add_argument(
        "--host",
        default=_env("HOST", d.host),
        help="address to bind (default 127.0.0.1; 0.0.0.0 serves the LAN)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=int(_env("PORT", str(d.port)) or d.port),
        help="port (default 9825; 0 picks a free one)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(_env("DATA_DIR", str(d.data_dir)) or "."),
        help="database, workspaces, logs, models and uploads (default ./data)",
    )
    p.add_argument(
        "--gpus",
        default=_env("GPUS", d.gpus),
        help="auto | none | sim:N (N simulated GPUs) | 0,2 (these GPUs only)",
    )
    p.add_argument(
        "--cpu-slots",
        type=int,
        default=int(_env("CPU_SLOTS", str(d.cpu_slots)) or 0),
        help="jobs that may run at once without a GPU (default 2)",
    )
    p.add_argument(
        "--token",
        default=_env("TOKEN"),
        help="API token (default: generated once and kept in DATA_DIR/token); it shows in the "
        "process list: prefer --token-file or VRUNGPU_TOKEN",
    )
    p.add_argument(
        "--no-auth",
        action="store_true",
        default=_env("NO_AUTH") in ("1", "true"),
        help="no token at all; refused unless --host is a loopback address",
    )
    p.add_argument(
        "--metrics-public",
        action="store_true",
        default=_env("METRICS_PUBLIC") in ("1", "true"),
        help="serve GET /metrics (Prometheus) without a token; every other route keeps it",
    )
    p.add_argument(
        "--kill-grace",
        type=float,
        default=float(_env("KILL_GRACE", str(d.kill_grace_s)) or 0),
        help="seconds between SIGTERM and SIGKILL on cancel/timeout (default 10)",
    )
    p.add_argument(
        "--python",
        default=_env("PYTHON", d.python),
        help="interpreter jobs run with (default: the gateway's own)",
    )
    p.add_argument(
        "--default-timeout",
        type=float,
        default=float(_env("DEFAULT_TIMEOUT", str(d.default_timeout_s)) or 0),
        help="timeout in seconds for requests that give none (default 3600)",
    )
    p.add_argument(
        "--max-upload-mb",
        type=int,
        default=int(_env("MAX_UPLOAD_MB", str(d.max_upload_mb)) or 0),
        help="largest accepted upload in MB (default 10240)",
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        default=[o for o in (_env("ALLOW_ORIGIN") or "").split(",") if o],
        help="a browser Origin (scheme://host:port, or *) trusted besides the gateway's own "
        "to POST/PUT/PATCH/DELETE and to open WebSockets (repeatable)",
    )
    p.add_argument(
        "--max-warm-models",
        type=int,
        default=int(_env("MAX_WARM_MODELS", str(d.max_warm_models)) or 0),
        help="model workers kept loaded for inference at once, each on a GPU or CPU slot "
        "(default 2; the least recently used idle one is stopped first)",
    )
    p.add_argument(
        "--worker-idle-timeout",
        type=float,
        default=float(_env("WORKER_IDLE_TIMEOUT", str(d.worker_idle_timeout_s)) or 0),
        help="seconds an idle model worker stays loaded before it frees its slot (default 600)",
    )
    p.add_argument(
        "--on-stop",
        choices=ON_STOP_CHOICES,
        default=_env("ON_STOP", d.on_stop),
        help="what a stopping gateway does with running jobs: leave them running for the "
        "next start (default), drain (start nothing new, wait for them) or kill them",
    )
    p.add_argument(
        "--max-log-mb",
        type=float,
        default=float(_env("MAX_LOG_MB", str(d.max_log_mb)) or 0),
        help="log size per task and stream; past it output is dropped (default 1024)",
    )
    p.add_argument(
        "--preload",
        default=_env("PRELOAD", ",".join(d.preload)),
        help="modules a warm zygote imports once (comma list, e.g. torch,numpy; default none); "
        "jobs fork from it instead of starting a fresh interpreter",
    )
    p.add_argument(
        "--kernel-idle-timeout",
        type=float,
        default=float(_env("KERNEL_IDLE_TIMEOUT", str(d.kernel_idle_timeout_s)) or 0),
        help="seconds a remote kernel may execute nothing before it is shut down and frees its "
        "GPUs; a busy kernel is never culled (default 3600; 0: never)",
    )
    p.add_argument(
        "--kernel-queue-timeout",
        type=float,
        default=float(_env("KERNEL_QUEUE_TIMEOUT", str(d.kernel_queue_timeout_s)) or 0),
        help="seconds a kernel start waits for its GPUs before it answers 503 (default 30)",
    )
    p.add_argument(
        "--max-kernels",
        type=int,
        default=int(_env("MAX_KERNELS", str(d.max_kernels)) or 0),
        help="remote kernels alive at once; more answer 409 (default 8)",
    )
    p.add_argument(
        "--prespawn-kernels",
        type=int,
        default=int(_env("PRESPAWN_KERNELS", str(d.prespawn_kernels)) or 0),
        help="kernels kept started (with --preload imported, no GPU yet) so a new kernel "
        "answers at once (default 0)",
    )
    p.add_argument(
        "--env-cache-mb",
        type=float,
        default=float(_env("ENV_CACHE_MB", str(d.env_cache_mb)) or 0),
        help="disk kept for per-job environments (requests with requirements) under "
        "DATA_DIR/envs; the least recently used unused ones go first (default 20480)",
    )
    p.add_argument(
        "--uv",
        default=_env("UV"),
        help="the uv binary that builds per-job environments (default: the one installed "
        "with the gateway, else uv on PATH)",
    )
    _security_flags(p, d)
    _limit_flags(p, d)
    _scale_flags(p, d)
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"), help="logging level")
    p.add_argument("--version", action="version", version=f"vrungpu-gateway {__version__}")
    return p


def _path(name: str) -> Path | None:
    value = _env(name)
    return Path(value) if value else None


def _security_flags(p: argparse.ArgumentParser, d: GatewayConfig) -> None:
    p.add_argument(
        "--users-file",
        type=Path,
        default=_path("USERS_FILE"),
        help='users and their tokens, JSON {"users": [{"name", "token" | "token_sha256", '
        '"admin"}]}; re-read on SIGHUP. The main token is the admin',
    )
    p.add_argument(
        "--allow-host",
        action="append",
        default=[h for h in (_env("ALLOW_HOST") or "").split(",") if h],
        help="a Host name served besides loopback names and the bind address (repeatable; "
        "guards against DNS rebinding)",
    )
    p.add_argument(
        "--token-file",
        type=Path,
        default=_path("TOKEN_FILE"),
        help="read the main token from this file (mode 600), so it never shows on a command line",
    )
    p.add_argument(
        "--job-user",
        default=_env("JOB_USER", "auto"),
        help="who jobs and kernels run as when the gateway runs as root: auto (default: nobody "
        "when it can run --python and reach the data dir, else root, with a warning), a user "
        "name, or gateway (the gateway's own user)",
    )
    p.add_argument(
        "--certfile",
        type=Path,
        default=_path("CERTFILE"),
        help="TLS certificate (PEM, chain included); with --keyfile the gateway serves https/wss",
    )
    p.add_argument("--keyfile", type=Path, default=_path("KEYFILE"), help="TLS private key (PEM)")


def _limit_flags(p: argparse.ArgumentParser, d: GatewayConfig) -> None:
    limits = [
        ("max-body-mb", float, d.max_body_mb, "largest JSON request body in MB"),
        ("max-code-kb", int, d.max_code_kb, "largest `code` of a run request in KB"),
        ("max-env-vars", int, d.max_env_vars, "most env variables a request sets"),
        ("max-env-kb", int, d.max_env_kb, "all env names and values of a request, in KB"),
        ("max-args", int, d.max_args, "most args a request passes"),
        ("max-args-kb", int, d.max_args_kb, "all args of a request, in KB"),
        ("max-progress-chars", int, d.max_progress_chars, "longest progress message kept"),
        ("max-unpack-mb", int, d.max_unpack_mb, "a project zip's total unpacked size in MB"),
        ("max-zip-ratio", float, d.max_zip_ratio, "a zip's unpacked/packed size ratio"),
        ("max-zip-members", int, d.max_zip_members, "most files in a project zip"),
    ]
    for flag, kind, default, text in limits:
        name = flag.upper().replace("-", "_")
        p.add_argument(
            f"--{flag}",
            type=kind,
            default=kind(_env(name, str(default)) or default),
            help=f"{text} (default {default})",
        )


def _scale_flags(p: argparse.ArgumentParser, d: GatewayConfig) -> None:
    p.add_argument(
        "--backend",
        choices=("local", "ray"),
        default=_env("BACKEND", d.backend),
        help="where jobs and kernels run: local processes on this host (default) or a Ray cluster",
    )
    p.add_argument(
        "--ray-address",
        default=_env("RAY_ADDRESS", d.ray_address),
        help="the Ray cluster with --backend ray (default auto: the local cluster)",
    )
    p.add_argument(
        "--db-url",
        default=_env("DB_URL"),
        help="SQLAlchemy URL of the store, e.g. postgresql+psycopg://user@host/db "
        "(default: SQLite in DATA_DIR)",
    )


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    return GatewayConfig(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        gpus=args.gpus,
        cpu_slots=args.cpu_slots,
        token=args.token,
        no_auth=args.no_auth,
        metrics_public=args.metrics_public,
        kill_grace_s=args.kill_grace,
        python=args.python,
        default_timeout_s=args.default_timeout,
        max_upload_mb=args.max_upload_mb,
        allow_origins=list(args.allow_origin),
        max_warm_models=args.max_warm_models,
        worker_idle_timeout_s=args.worker_idle_timeout,
        on_stop=args.on_stop,
        max_log_mb=args.max_log_mb,
        preload=[m.strip() for m in (args.preload or "").split(",") if m.strip()],
        kernel_idle_timeout_s=args.kernel_idle_timeout,
        kernel_queue_timeout_s=args.kernel_queue_timeout,
        max_kernels=args.max_kernels,
        prespawn_kernels=args.prespawn_kernels,
        env_cache_mb=args.env_cache_mb,
        uv=args.uv,
        users_file=args.users_file,
        allow_hosts=list(args.allow_host),
        token_file=args.token_file,
        job_user=args.job_user,
        certfile=args.certfile,
        keyfile=args.keyfile,
        max_body_mb=args.max_body_mb,
        max_code_kb=args.max_code_kb,
        max_env_vars=args.max_env_vars,
        max_env_kb=args.max_env_kb,
        max_args=args.max_args,
        max_args_kb=args.max_args_kb,
        max_progress_chars=args.max_progress_chars,
        max_unpack_mb=args.max_unpack_mb,
        max_zip_ratio=args.max_zip_ratio,
        max_zip_members=args.max_zip_members,
        backend=args.backend,
        ray_address=args.ray_address,
        db_url=args.db_url,
    )


def _url(host: str, port: int, *, tls: bool = False) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"{'https' if tls else 'http'}://{shown}:{port}"


def ssl_context(config: GatewayConfig) -> ssl.SSLContext | None:
    """The server's TLS context with --certfile/--keyfile (None without them); ValueError
    (one line) when they do not load or do not match."""
    if config.certfile is None or config.keyfile is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(config.certfile), str(config.keyfile))
    except ssl.SSLError as exc:
        raise ValueError(
            f"--certfile {config.certfile} / --keyfile {config.keyfile}: not a PEM certificate "
            f"and its matching private key ({exc.reason or exc})"
        ) from None
    return context


def _token_shown(gateway: Gateway) -> str:
    """The token as the banner shows it: in full only when it is the data dir's own (the
    operator who gave one already has it, and the log may be read by others)."""
    config = gateway.config
    if gateway.token is None:
        return ""
    if config.token_file is not None:
        return f"?token=<from {config.token_file}>"
    if config.token:
        return "?token=<the token you gave>"
    return f"?token={gateway.token}"


def _write_runtime(gateway: Gateway, url: str, port: int) -> Path:
    path = gateway.layout.root / "gateway.json"
    info = {"url": url, "port": port, "pid": os.getpid(), "version": __version__}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(info, fh)
    return path


async def serve(config: GatewayConfig) -> None:
    tls = ssl_context(config)  # a bad certificate fails before anything starts
    gateway = Gateway.create(config)
    await gateway.start()
    max_body = int(config.max_body_mb * 2**20)  # uploads raise their own in prepare()
    server = tornado.httpserver.HTTPServer(
        BodyLimit(make_app(gateway), max_bytes=max_body),
        max_body_size=max_body + SLACK_BYTES,
        max_buffer_size=64 * 2**20,
        idle_connection_timeout=3600,
        ssl_options=tls,
    )
    sockets = tornado.netutil.bind_sockets(config.port, address=config.host)
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    url = _url(config.host, port, tls=tls is not None)
    runtime = _write_runtime(gateway, url, port)
    pool = gateway.scheduler.snapshot()
    print(
        f"VrunGPU gateway {__version__}: {pool.total_gpus} GPU(s) "
        f"[{gateway.monitor.backend.kind}], {pool.cpu_slots} CPU slot(s), data in "
        f"{gateway.layout.root}",
        flush=True,
    )
    query = _token_shown(gateway)
    print(
        f"Listening on {url}\n    {url}/{query}\n    dashboard: {url}/dashboard/{query}",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, gateway.users.reload)  # re-read --users-file
    await stop.wait()
    log.info("stopping: no new requests; running jobs: %s", config.on_stop)
    server.stop()
    await gateway.stop()
    runtime.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    os.umask(0o077)  # whatever the gateway writes (database, WAL, logs, workspaces) is its own
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["db"]:  # `vrungpu-gateway db upgrade|current`
        raise SystemExit(db_commands.main(argv[1:]))
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logmask.install()  # tokens never reach the log, whoever logs them
    config = config_from_args(args)
    try:
        config.check()
        asyncio.run(serve(config))
    except ValueError as exc:
        print(f"vrungpu-gateway: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as exc:
        print(f"vrungpu-gateway: cannot start: {exc}", file=sys.stderr)
        raise SystemExit(1) from None

"""The ``vrungpu`` group: global options, ``connect``, and `main`, which turns every failure
into one line on stderr (exit 2 for usage, 1 for the gateway's refusals, 130 for Ctrl-C)."""

from __future__ import annotations

import sys

import click

from vrungpu_magic import __version__
from vrungpu_magic.cli import catalog, jobs
from vrungpu_magic.cli.common import Settings, error_line, print_text
from vrungpu_magic.client import VrunGPUClient, VrunGPUError
from vrungpu_magic.config import Connection, save_connection


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar=None, metavar="URL", help="Gateway URL [$VRUNGPU_URL, config].")
@click.option("--token", metavar="T", help="Gateway token [$VRUNGPU_TOKEN, config].")
@click.option(
    "--ca-bundle",
    metavar="PEM",
    type=click.Path(exists=True, dir_okay=False),
    help="CA certificates of an https gateway [$VRUNGPU_CA_BUNDLE, config; the system's].",
)
@click.version_option(__version__, prog_name="vrungpu")
@click.pass_context
def cli(ctx: click.Context, url: str | None, token: str | None, ca_bundle: str | None) -> None:
    """Run and follow jobs on a VrunGPU gateway from a terminal."""
    ctx.obj = Settings(url, token, ca_bundle)


@cli.command()
@click.argument("url")
@click.option("--token", metavar="T", help="The gateway's token.")
@click.option(
    "--ca-bundle",
    metavar="PEM",
    type=click.Path(exists=True, dir_okay=False),
    help="CA certificates of an https gateway (saved with the URL).",
)
@click.pass_context
def connect(ctx: click.Context, url: str, token: str | None, ca_bundle: str | None) -> int:
    """Check the gateway at URL and save it (token and CA bundle too) for later commands."""
    settings = ctx.ensure_object(Settings)
    client = VrunGPUClient(url, token or settings.token, ca_bundle=ca_bundle or settings.ca_bundle)
    info = client.check_health()
    free = info.get("available_gpus", 0)
    free = len(free) if isinstance(free, list) else free
    print_text(
        f"Connected to {client.url}: VrunGPU {info.get('version', '?')}, "
        f"{info.get('gpu_count', 0)} GPUs ({free} free)"
    )
    path = save_connection(Connection(client.url, client.token, client.ca_bundle))
    print_text(f"Saved to {path}")
    return 0


for command in [*jobs.COMMANDS, *catalog.COMMANDS]:
    cli.add_command(command)


def _usage_line(exc: click.UsageError) -> str:
    where = exc.ctx.command_path if exc.ctx else "vrungpu"
    hint = f" (see {where} --help)" if exc.ctx else ""
    return f"{where}: {' '.join(exc.format_message().split())}{hint}"


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: sys.argv); the exit status."""
    args = (sys.argv[1:] if argv is None else argv) or ["--help"]
    try:
        code = cli.main(args, prog_name="vrungpu", standalone_mode=False)
    except click.UsageError as exc:
        return _fail(_usage_line(exc), 2)
    except click.ClickException as exc:
        return _fail(f"vrungpu: {exc.format_message()}", exc.exit_code)
    except click.Abort:  # Ctrl-C outside a followed task
        return 130
    except VrunGPUError as exc:
        return _fail(error_line(exc), 1)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # never a traceback: one line that names what went wrong
        return _fail(f"vrungpu: {type(exc).__name__}: {exc}", 1)
    return code if isinstance(code, int) else 0


def _fail(line: str, code: int) -> int:
    click.echo(line, err=True)
    return code

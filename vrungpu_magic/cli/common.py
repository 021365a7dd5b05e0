"""What the ``vrungpu`` commands share: the client of the global options, ``--json`` output,
and the one-line form of a gateway error."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from vrungpu_magic.client import VrunGPUClient, VrunGPUError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Settings:
    """The group's ``--url`` / ``--token`` / ``--ca-bundle`` (None: environment, then the
    config file)."""

    url: str | None = None
    token: str | None = None
    ca_bundle: str | None = None
    _client: VrunGPUClient | None = None

    def client(self) -> VrunGPUClient:
        if self._client is None:
            self._client = VrunGPUClient(self.url, self.token, ca_bundle=self.ca_bundle)
        return self._client


def client_of(ctx: click.Context) -> VrunGPUClient:
    """The client for this invocation (connection resolved once)."""
    return ctx.ensure_object(Settings).client()


def json_option(func: F) -> F:
    """``--json``: print the gateway's JSON (parses with json.loads) instead of a table."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Machine-readable JSON instead of text."
    )(func)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def print_text(text: object) -> None:
    """A table (its text ``repr``) or a string, on stdout."""
    click.echo(text if isinstance(text, str) else repr(text))


def show(data: Any, as_json: bool, as_text: Callable[[Any], object]) -> int:
    """Print ``data`` as JSON or as ``as_text(data)`` says; exit status 0."""
    if as_json:
        print_json(data)
    else:
        print_text(as_text(data))
    return 0


def error_line(exc: VrunGPUError) -> str:
    """A gateway failure as the one line the terminal shows, with a hint where one helps."""
    line = f"vrungpu: {exc}"
    if exc.status == 401:
        line += "; set the token: vrungpu connect URL --token TOKEN"
    elif exc.status == 0 and exc.code == "unreachable":
        line += "; is the gateway running? (vrungpu connect URL)"
    return line

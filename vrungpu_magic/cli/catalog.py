"""``vrungpu gpus``, ``models``, ``predict`` and ``kernels``: what the gateway holds."""

from __future__ import annotations

import json
from typing import Any

import click

from vrungpu_magic.cli.common import client_of, json_option, print_json, show
from vrungpu_magic.render import Column, Table, fmt_duration, format_gpus, model_table, placement

KERNEL_COLUMNS: list[Column] = [
    ("kernel_id", lambda k: k.get("id")),
    ("session", lambda k: k.get("session")),
    ("kernelspec", lambda k: k.get("name")),
    ("where", lambda k: placement({"gpu_ids": k.get("gpus") or [], "device": k.get("device")})),
    ("state", lambda k: k.get("execution_state")),
    ("idle", lambda k: fmt_duration(k["idle_s"]) if k.get("idle_s") is not None else None),
    ("connections", lambda k: k.get("connections")),
]


@click.command()
@json_option
@click.pass_context
def gpus(ctx: click.Context, as_json: bool) -> int:
    """The GPUs: utilisation, memory and the task holding each."""
    client = client_of(ctx)
    both = {"gpu": client.get_gpu_info(), "pool": client.get_gpu_pool()}
    return show(both, as_json, lambda d: format_gpus(d["gpu"], d["pool"]))


@click.command()
@click.option("--name", metavar="N", help="Only the versions of this model.")
@json_option
@click.pass_context
def models(ctx: click.Context, name: str | None, as_json: bool) -> int:
    """The model registry, newest first."""
    return show(client_of(ctx).list_models(name=name), as_json, model_table)


def _read_input(source: click.File) -> Any:
    try:
        return json.load(source)  # type: ignore[arg-type]
    except ValueError as exc:
        raise click.BadParameter(f"{source.name} is not JSON: {exc}", param_hint="INPUT") from None


@click.command()
@click.argument("model_id", metavar="MODEL")
@click.argument("source", type=click.File("r"), metavar="INPUT.json")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="S")
@click.option("--gpu", type=click.IntRange(min=0), metavar="N", help="Run on GPU N.")
@click.option("--cpu", is_flag=True, help="Run on a CPU slot.")
@click.pass_context
def predict(
    ctx: click.Context,
    model_id: str,
    source: click.File,
    timeout: float | None,
    gpu: int | None,
    cpu: bool,
) -> int:
    """Run MODEL on the JSON in INPUT.json (- reads stdin); prints the result as JSON."""
    if gpu is not None and cpu:
        raise click.UsageError("give --gpu or --cpu, not both")
    data = _read_input(source)
    device = "cpu" if cpu else None
    result = client_of(ctx).predict(model_id, data, timeout=timeout, gpu_id=gpu, device=device)
    print_json(result)
    return 0


@click.command()
@json_option
@click.pass_context
def kernels(ctx: click.Context, as_json: bool) -> int:
    """The live remote kernels (sessions first)."""
    found = client_of(ctx).list_kernels()
    found.sort(key=lambda k: (k.get("session") is None, k.get("session") or ""))
    return show(found, as_json, lambda rows: Table(rows, KERNEL_COLUMNS, "No kernels."))


COMMANDS = [gpus, models, predict, kernels]

"""Kernelspecs: ``vrungpu-cpu`` and ``vrungpu-{K}gpu`` for K = 1..N, and what each asks for.

The gateway serves virtual specs (nothing is installed in a Jupyter data dir): the ``argv`` a
spec shows is informative; kernels are started by the kernel manager under their shims.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from vrungpu_gateway.errors import InvalidRequest, NotFound

LANGUAGE = "python"
CPU_SPEC = "vrungpu-cpu"
_GPU_SPEC = re.compile(r"^vrungpu-(\d+)gpu$")


@dataclass(frozen=True)
class Placement:
    """What a kernel asks the scheduler for: ``gpus`` GPUs (maybe exactly ``gpu_id``), or a
    CPU slot when ``gpus`` is 0 and no ``gpu_id`` is given."""

    gpus: int = 0
    gpu_id: int | None = None

    @property
    def device(self) -> str:
        return "gpu" if self.gpus or self.gpu_id is not None else "cpu"


def spec_names(gpu_count: int) -> list[str]:
    return [CPU_SPEC, *(f"vrungpu-{k}gpu" for k in range(1, gpu_count + 1))]


def default_spec(gpu_count: int) -> str:
    return "vrungpu-1gpu" if gpu_count else CPU_SPEC


def display_name(name: str) -> str:
    gpus = placement_of(name, gpu_count=1 << 16).gpus
    if not gpus:
        return "Python 3 (VrunGPU, CPU)"
    return f"Python 3 (VrunGPU, {gpus} GPU{'s' if gpus > 1 else ''})"


def placement_of(name: str, *, gpu_count: int, gpu_id: int | None = None) -> Placement:
    """What spec ``name`` asks for (``gpu_id`` picks the GPU of a one-GPU spec); NotFound for
    a spec this host does not serve."""
    match = _GPU_SPEC.match(name)
    gpus = int(match.group(1)) if match else 0
    if (name != CPU_SPEC and not match) or gpus > gpu_count or (match and gpus < 1):
        have = ", ".join(spec_names(gpu_count))
        raise NotFound(f"no kernelspec {name!r} (this gateway has: {have})", code="no_such_spec")
    if gpu_id is not None and gpus != 1:
        raise InvalidRequest(f"gpu_id selects one GPU; kernelspec {name} does not take one")
    return Placement(gpus=gpus, gpu_id=gpu_id)


def spec_model(name: str, *, argv: list[str]) -> dict[str, Any]:
    """One entry of ``GET /api/kernelspecs``, shaped as jupyter_server's."""
    placement = placement_of(name, gpu_count=1 << 16)
    return {
        "name": name,
        "spec": {
            "argv": argv,
            "display_name": display_name(name),
            "language": LANGUAGE,
            "interrupt_mode": "signal",
            "env": {},
            "metadata": {"vrungpu": {"gpus": placement.gpus, "device": placement.device}},
        },
        "resources": {},
    }


def specs_model(*, gpu_count: int, argv: list[str]) -> dict[str, Any]:
    """The ``GET /api/kernelspecs`` body."""
    return {
        "default": default_spec(gpu_count),
        "kernelspecs": {name: spec_model(name, argv=argv) for name in spec_names(gpu_count)},
    }

"""A job's environment: an allowlist of the gateway's variables plus the VrunGPU ones.

Nothing outside the allowlist reaches a job, so the gateway's token (``VRUNGPU_TOKEN``) and
whatever secrets its own environment holds stay with the gateway.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from vrungpu_gateway.errors import InvalidRequest

ALLOWED = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TERM",
        "TMPDIR",
        "LD_LIBRARY_PATH",
        "CUDA_HOME",
        "CUDA_PATH",
        "CONDA_PREFIX",
        "VIRTUAL_ENV",
        "HF_HOME",
        "TORCH_HOME",
        "XDG_CACHE_HOME",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "OPENBLAS_CORETYPE",
        "OPENBLAS_L2_SIZE",
        "SSL_CERT_FILE",
    }
)
ALLOWED_PREFIXES = ("LC_", "NVIDIA_", "NCCL_")
RESERVED = frozenset({"CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "PYTHONUNBUFFERED"})
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def validate_user_env(env: Mapping[str, str]) -> dict[str, str]:
    """Check the variables a run request asks for; the VrunGPU ones cannot be overridden."""
    clean = {}
    for key, value in env.items():
        if not NAME_RE.fullmatch(key):
            raise InvalidRequest(f"env: invalid variable name {key!r}")
        if key in RESERVED or key.startswith("VRUNGPU_"):
            raise InvalidRequest(f"env: {key} is set by the gateway and cannot be overridden")
        if not isinstance(value, str) or "\x00" in value:
            raise InvalidRequest(f"env: value of {key} must be a string")
        clean[key] = value
    return clean


def job_environment(
    *,
    task_id: str,
    workspace: str,
    gpu_ids: tuple[int, ...],
    user_env: Mapping[str, str],
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    base = os.environ if base is None else base
    env = {k: v for k, v in base.items() if k in ALLOWED or k.startswith(ALLOWED_PREFIXES)}
    env.update(user_env)
    env.update(
        {
            "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in gpu_ids),
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "PYTHONUNBUFFERED": "1",
            "VRUNGPU_TASK_ID": task_id,
            "VRUNGPU_WORKSPACE": workspace,
        }
    )
    return env

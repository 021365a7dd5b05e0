"""The ``vrungpu`` command: jobs, logs, GPUs, models and kernels of a gateway from a terminal.

A thin shell over `vrungpu_magic.client.VrunGPUClient` (it never imports the gateway or
IPython). The connection comes from ``--url``/``--token``, then ``VRUNGPU_URL`` /
``VRUNGPU_TOKEN``, then the config file ``vrungpu connect`` writes (`vrungpu_magic.config`,
the same one as ``%vrungpu connect --save``).
"""

from __future__ import annotations

from vrungpu_magic.cli.app import cli, main

__all__ = ["cli", "main"]

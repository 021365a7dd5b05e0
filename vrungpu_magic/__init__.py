"""VrunGPU on the notebook side: the %%vrungpu magic, its widgets and the Python client.

``%load_ext vrungpu_magic`` registers the magics. The package also carries the JupyterLab
sidebar (prebuilt) and the Jupyter server extension that proxies the sidebar to the gateway.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.5.0"


def load_ipython_extension(ipython: Any) -> None:
    from vrungpu_magic.magic import VrunGPUMagics

    ipython.register_magics(VrunGPUMagics(shell=ipython))


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "vrungpu_magic.serverext"}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "vrungpu-labext"}]

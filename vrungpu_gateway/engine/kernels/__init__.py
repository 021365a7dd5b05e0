"""Remote kernels: IPython kernels on this host that hold GPUs, served over Jupyter's protocol."""

from vrungpu_gateway.engine.kernels.manager import KernelManager, KernelSettings
from vrungpu_gateway.engine.kernels.process import KernelLauncher

__all__ = ["KernelLauncher", "KernelManager", "KernelSettings"]

"""VrunGPU gateway: runs notebook cells and projects on a GPU host's free GPUs."""

__version__ = "0.5.0"

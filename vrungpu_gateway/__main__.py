"""`python -m vrungpu_gateway` and the `vrungpu-gateway` command start the gateway.

`pip install vrungpu` is the client side; the gateway's own dependencies (tornado, SQLAlchemy,
nvidia-ml-py, ...) come with `vrungpu[gateway]`. Without them the command says so in one line.
"""

from __future__ import annotations

import sys

HINT = "install vrungpu[gateway]: pip install 'vrungpu[gateway]'"


def main() -> None:
    try:
        from vrungpu_gateway.cli import main as run
    except ModuleNotFoundError as exc:
        top = (exc.name or "").partition(".")[0]
        if top in ("", "vrungpu_gateway", "vrungpu_magic"):
            raise
        sys.exit(f"vrungpu-gateway: the gateway needs {top!r}, which is not installed; {HINT}")
    run()


if __name__ == "__main__":
    main()

"""The build function behind pyproject's jupyter-builder hook: a wheel or sdist holds the
production build of the sidebar, whatever the checkout had in vrungpu_magic/labextension.

hatch-jupyter-builder's npm_builder rebuilds only when labextension/ is newer than the build,
so a development build (`jlpm build`: source maps, build_log.json, no third-party licenses) left
in the checkout would be packed as it is. Here a standard (wheel/sdist) build forces a rebuild
with `build:prod` when the build present is not a production one; a production build that is up
to date is used as it is, so a wheel built from the sdist still needs no Node.js.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def is_production_build(build_dir: str | Path) -> bool:
    """A production build has third-party licenses, and no source maps nor build log."""
    root = Path(build_dir)
    if not (root / "static" / "third-party-licenses.json").is_file():
        return False
    if (root / "build_log.json").exists():
        return False
    return not any(root.rglob("*.map"))


def npm_builder(target_name: str, version: str, **kwargs: Any) -> None:
    from hatch_jupyter_builder import npm_builder as build  # the hook's build dependency

    build_dir = kwargs.get("build_dir")
    exists = bool(build_dir) and Path(build_dir).exists()
    if version == "standard" and exists and not is_production_build(build_dir):
        kwargs["force"] = True
    build(target_name, version, **kwargs)

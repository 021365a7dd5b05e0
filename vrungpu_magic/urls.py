"""URL pieces the client builds: ids as whole path segments."""

from __future__ import annotations

from urllib.parse import quote


def seg(value: object) -> str:
    """One path segment: an id is quoted whole, so "../gpu" cannot reach another route."""
    return quote(str(value), safe="")

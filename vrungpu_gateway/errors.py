"""Errors the engine and the store raise; the HTTP layer maps each class to one status code.

Below both layers, like ``records``: the store raises ``Unavailable`` without importing the
engine.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class: ``detail`` is a one-line human message, ``code`` a machine code."""

    code = "error"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code:
            self.code = code


class InvalidRequest(EngineError):
    """The caller's input is malformed or asks for something impossible (400)."""

    code = "invalid_request"


class NotFound(EngineError):
    """An unknown task, model or file (404)."""

    code = "not_found"


class Conflict(EngineError):
    """The request does not fit the object's current state (409)."""

    code = "conflict"


class TooLarge(EngineError):
    """An upload or archive exceeds the configured limit (413)."""

    code = "too_large"


class Unavailable(EngineError):
    """The request is valid but cannot be served now, e.g. no GPU came free in time (503)."""

    code = "unavailable"

"""The engine's errors: the classes of ``vrungpu_gateway.errors`` (their one home, below both
the engine and the store), under the path the engine and the HTTP layer import them by."""

from vrungpu_gateway.errors import (
    Conflict,
    EngineError,
    InvalidRequest,
    NotFound,
    TooLarge,
    Unavailable,
)

__all__ = ["Conflict", "EngineError", "InvalidRequest", "NotFound", "TooLarge", "Unavailable"]

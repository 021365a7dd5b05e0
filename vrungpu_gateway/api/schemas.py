"""Parsing of request bodies into engine types, with one-line errors for bad input.

JSON bodies arrive typed; multipart forms arrive as strings and are coerced here too, so
the same rules hold for `/run/async` and `/run/project`.
"""

from __future__ import annotations

import math
from typing import Any

from vrungpu_gateway.api.jsonin import loads_strict
from vrungpu_gateway.engine.manager import TaskSpec
from vrungpu_gateway.engine.pyenvs import parse_requirements_text, validate_requirements
from vrungpu_gateway.errors import InvalidRequest
from vrungpu_gateway.protocol import Device

MAX_TIMEOUT_S = 7 * 24 * 3600
MAX_INT = 2**63 - 1  # what the store can hold


def _int(value: Any, name: str, *, minimum: int | None = None, coerce: bool = False) -> int:
    if coerce and isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise InvalidRequest(f"{name} must be an integer, got {value!r}") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 2.0 is an integer to JSON Schema
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{name} must be an integer, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise InvalidRequest(f"{name} must be >= {minimum}, got {value}")
    if abs(value) > MAX_INT:
        raise InvalidRequest(f"{name} is out of range (a 64-bit integer)")
    return value


def _timeout(value: Any, *, coerce: bool) -> float:
    if coerce and isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise InvalidRequest(f"timeout must be a number of seconds, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"timeout must be a number of seconds, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise InvalidRequest(f"timeout must be a positive number of seconds, got {value}")
    if value > MAX_TIMEOUT_S:
        raise InvalidRequest(f"timeout must be at most {MAX_TIMEOUT_S} seconds")
    return float(value)


def _str(value: Any, name: str, *, max_len: int = 200) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a string, got {type(value).__name__}")
    if len(value) > max_len:
        raise InvalidRequest(f"{name} is longer than {max_len} characters")
    return value


def _bool(value: Any, name: str, *, coerce: bool) -> bool:
    if coerce and isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"{name} must be true or false")
    return value


def _list_of_str(value: Any, name: str, *, coerce: bool) -> list[str]:
    if coerce and isinstance(value, str):
        try:
            text = value
            value = loads_strict(text, what=name) if text.strip().startswith("[") else text.split()
        except ValueError:
            raise InvalidRequest(f"{name} must be a JSON list of strings") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"{name} must be a list of strings")
    return value


def _env(value: Any, *, coerce: bool) -> dict[str, str]:
    if coerce and isinstance(value, str):
        try:
            value = loads_strict(value, what="env")
        except ValueError:
            raise InvalidRequest("env must be a JSON object of strings") from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidRequest("env must be an object mapping names to string values")
    return value


def _requirements(value: Any, *, coerce: bool) -> list[str]:
    """A JSON list of strings; a form field may also hold requirements.txt text."""
    if coerce and isinstance(value, str):
        if not value.strip().startswith("["):
            return parse_requirements_text(value, where="requirements")
        try:
            value = loads_strict(value, what="requirements")
        except ValueError:
            raise InvalidRequest("requirements must be a JSON list of strings") from None
    return validate_requirements(value)


def parse_task_spec(
    body: dict[str, Any], *, default_timeout_s: float, form: bool = False
) -> TaskSpec:
    """The fields shared by every run request (all optional)."""
    coerce = form
    spec: dict[str, Any] = {"timeout_s": default_timeout_s}
    if body.get("name") not in (None, ""):
        spec["name"] = _str(body["name"], "name")
    if body.get("timeout") not in (None, ""):
        spec["timeout_s"] = _timeout(body["timeout"], coerce=coerce)
    if body.get("gpu_id") not in (None, ""):
        spec["gpu_id"] = _int(body["gpu_id"], "gpu_id", minimum=0, coerce=coerce)
    if body.get("gpus") not in (None, ""):
        spec["gpus"] = _int(body["gpus"], "gpus", minimum=1, coerce=coerce)
    if body.get("priority") not in (None, ""):
        spec["priority"] = _int(body["priority"], "priority", coerce=coerce)
    if body.get("device") not in (None, ""):
        device = _str(body["device"], "device")
        if device not in {d.value for d in Device}:
            raise InvalidRequest(f'device must be "auto", "gpu" or "cpu", got {device!r}')
        spec["device"] = Device(device)
    if body.get("env") not in (None, ""):
        spec["env"] = _env(body["env"], coerce=coerce)
    if body.get("args") not in (None, ""):
        spec["args"] = _list_of_str(body["args"], "args", coerce=coerce)
    if body.get("requirements") is not None:
        spec["requirements"] = _requirements(body["requirements"], coerce=coerce)
    if body.get("save_model") not in (None, ""):
        spec["save_model"] = _bool(body["save_model"], "save_model", coerce=coerce)
    if body.get("model_name") not in (None, ""):
        spec["model_name"] = _str(body["model_name"], "model_name")
    if spec.get("save_model") and not spec.get("model_name"):
        raise InvalidRequest("save_model needs a model_name")
    return TaskSpec(**spec)


def parse_code(body: dict[str, Any]) -> str:
    if "code" not in body:
        raise InvalidRequest('"code" is required: the Python source to run', code="missing_code")
    code = body["code"]
    if not isinstance(code, str):
        raise InvalidRequest(f'"code" must be a string, got {type(code).__name__}')
    if not code.strip():
        raise InvalidRequest('"code" is empty')
    return code

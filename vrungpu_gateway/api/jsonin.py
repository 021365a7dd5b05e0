"""Strict decoding of JSON request bodies: what `json.loads` chokes on (deep nesting) or lets
through (NaN, infinities, huge integers, lone surrogates, NUL characters) is one 400 line with
code `bad_json` before any handler sees it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from vrungpu_gateway.errors import InvalidRequest

MAX_DEPTH = 64  # arrays and objects inside each other
INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # what SQLite, numpy and every JSON peer can hold
# Fields handed to user code as data (a model's predict()), never used as a name, path, env
# or argument: a NUL character is allowed there.
OPAQUE_FIELDS = frozenset({"input_data"})
TOO_DEEP = f"arrays and objects nest deeper than {MAX_DEPTH} levels"
_NUMBERS = frozenset({int, float})  # not bool: type(True) is bool
_CONTAINERS = frozenset({dict, list})


# What may hide a bad string: a \\u escape of a surrogate or NUL (JSON has no other way to
# write them). A bad number needs a run of 19 digits or a 3-digit exponent, found in a copy of
# the body with every digit made 0, every e or E an e, every sign a + (bytes.translate: fast).
_SUSPECT_STRING = re.compile(r"\\u[dD][89a-fA-F]|\\u0000")
_NUMBER_SHAPES = bytes.maketrans(b"0123456789eE+-", b"0000000000ee++")
_LONG_NUMBERS = (b"0" * 19, b"e000", b"e+000")


def _constant(name: str) -> float:
    raise _Refused(f"{name} is not a JSON number")


class _Refused(ValueError):
    """Raised inside json.loads by the constant hook; its message is the whole answer."""


def parse_object(raw: bytes) -> dict[str, Any]:
    """The JSON object in ``raw``; InvalidRequest (code bad_json) with one line otherwise."""
    if not raw:
        raise InvalidRequest("request body is empty: send a JSON object", code="bad_json")
    try:
        text = raw.decode("utf-8")
        body = json.loads(text, parse_constant=_constant)
    except _Refused as exc:
        raise InvalidRequest(f"invalid JSON: {exc}", code="bad_json") from None
    except RecursionError:
        raise InvalidRequest(f"invalid JSON: {TOO_DEEP}", code="bad_json") from None
    except ValueError as exc:  # JSONDecodeError, invalid UTF-8, an int of 4300+ digits
        raise InvalidRequest(f"invalid JSON: {_one_line(exc)}", code="bad_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the JSON body must be an object", code="bad_json")
    nests = text.count("[") + text.count("{") > MAX_DEPTH
    shapes = raw.translate(_NUMBER_SHAPES)
    numbers = any(long in shapes for long in _LONG_NUMBERS)
    suspect = nests or numbers or _SUSPECT_STRING.search(text)
    if suspect and (problem := check_values(body, numbers=numbers)):
        raise InvalidRequest(f"invalid JSON: {problem}", code="bad_json")
    return body


def loads_strict(text: str, *, what: str) -> Any:
    """The JSON in a form field (``what`` names it) under the body's rules: InvalidRequest for
    nesting, numbers and strings, ValueError (the caller's message) when it is no JSON."""
    try:
        value = json.loads(text, parse_constant=_constant)
    except _Refused as exc:
        raise InvalidRequest(f"{what}: {exc}", code="bad_json") from None
    except RecursionError:
        raise InvalidRequest(f"{what}: {TOO_DEEP}", code="bad_json") from None
    if problem := _tree_problem(value, opaque=False, numbers=True):
        raise InvalidRequest(f"{what}: {problem}", code="bad_json")
    return value


def check_values(body: dict[str, Any], *, numbers: bool = True) -> str | None:
    """What is wrong inside a decoded body (nesting, strings, and with ``numbers`` numbers),
    or None. Iterative, so depth costs no stack; a list is looked at by the types it holds,
    so a long list of numbers costs C loops only."""
    for key, value in body.items():
        if problem := _strings_problem([key], opaque=False):
            return f"a key {problem}"
        if problem := _tree_problem(value, opaque=key in OPAQUE_FIELDS, numbers=numbers):
            return problem
    return None


def _tree_problem(root: Any, *, opaque: bool, numbers: bool) -> str | None:
    stack: list[tuple[list[Any], int]] = [([root], 1)]  # values, the depth of their container
    while stack:
        items, depth = stack.pop()
        kinds = set(map(type, items))
        if str in kinds and (problem := _strings_problem(_of(items, kinds, str), opaque=opaque)):
            return f"a string {problem}"
        if numbers and kinds & _NUMBERS and (problem := _numbers_problem(items, kinds)):
            return problem
        if not kinds & _CONTAINERS:
            continue
        if depth >= MAX_DEPTH:
            return TOO_DEEP
        for item in _of(items, kinds, dict, list):
            if isinstance(item, dict):
                if problem := _strings_problem(list(item), opaque=False):
                    return f"a key {problem}"
                item = list(item.values())
            stack.append((item, depth + 1))
    return None


def _of(items: list[Any], kinds: set[type], *wanted: type) -> list[Any]:
    return items if kinds <= set(wanted) else [x for x in items if type(x) in wanted]


def _strings_problem(texts: list[str], *, opaque: bool) -> str | None:
    joined = "".join(texts)
    if not joined.isascii():
        try:
            joined.encode("utf-8")
        except UnicodeEncodeError:
            return "holds an unpaired surrogate (\\ud800-\\udfff): not valid Unicode"
    if not opaque and "\x00" in joined:
        return "holds a NUL character (\\u0000)"
    return None


def _numbers_problem(items: list[Any], kinds: set[type]) -> str | None:
    values = _of(items, kinds, int, float)
    for value in (min(values), max(values)):
        if isinstance(value, float) and not math.isfinite(value):
            return "a number is out of range (overflows a double)"
        if isinstance(value, int) and not INT_MIN <= value <= INT_MAX:
            return f"integer {str(value)[:20]}... is out of range (beyond 64 bits)"
    return None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]

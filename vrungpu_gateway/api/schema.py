"""JSON Schemas (OpenAPI 3.1) generated from the wire shapes in ``vrungpu_gateway/wire.py``."""

from __future__ import annotations

import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints, is_typeddict

from vrungpu_gateway import wire

SCALARS: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def schema_for(tp: Any) -> dict[str, Any]:
    """The schema of one annotation (a typed dict becomes a reference to its component)."""
    if tp is Any:
        return {}
    if tp in SCALARS:
        return dict(SCALARS[tp])
    if is_typeddict(tp):
        return ref(tp.__name__)
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return {"type": "string", "enum": list(args)}
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        inner: dict[str, Any] = (
            schema_for(rest[0]) if len(rest) == 1 else {"anyOf": [schema_for(a) for a in rest]}
        )
        if len(rest) == len(args):
            return inner
        if isinstance(inner.get("type"), str) and "enum" not in inner:
            return {**inner, "type": [inner["type"], "null"]}
        return {"anyOf": [inner, {"type": "null"}]}  # a reference, an enum, a union
    if origin is list:
        return {"type": "array", "items": schema_for(args[0]) if args else {}}
    if origin is dict:
        return {"type": "object", "additionalProperties": schema_for(args[1]) if args else {}}
    raise TypeError(f"no JSON schema for {tp!r}")


def object_schema(cls: type) -> dict[str, Any]:
    """A typed dict as an object schema: its fields, which are required, their docs and the
    rules the gateway holds them to (``wire.FIELD_RULES``, ``wire.SHAPE_RULES``)."""
    hints = get_type_hints(cls)
    docs = wire.FIELD_DOCS.get(cls.__name__, {})
    rules = wire.FIELD_RULES.get(cls.__name__, {})
    properties = {}
    for name, tp in hints.items():
        prop = schema_for(tp)
        if name in docs:
            prop = {**prop, "description": docs[name]}
        properties[name] = {**prop, **rules.get(name, {})}
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        **wire.SHAPE_RULES.get(cls.__name__, {}),
    }
    required = [name for name in hints if name in cls.__required_keys__]  # type: ignore[attr-defined]
    if required:
        schema["required"] = required
    if cls.__doc__:
        schema["description"] = " ".join(cls.__doc__.split())
    return schema


def components() -> dict[str, dict[str, Any]]:
    """Every wire shape, by class name."""
    return {cls.__name__: object_schema(cls) for cls in wire.WIRE_SHAPES}

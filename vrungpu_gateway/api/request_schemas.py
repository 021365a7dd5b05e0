"""The request bodies of the OpenAPI document: what the gateway takes, field by field.

A schema-valid request is one the gateway accepts: the rules of the handlers (api/schemas.py,
api/models.py, api/kernels.py), of strict JSON decoding (api/jsonin.py) and, in the served
document, this gateway's GPUs and request limits are written into the schemas here.
"""

from __future__ import annotations

import copy
from typing import Any

from vrungpu_gateway import wire
from vrungpu_gateway.api import schema
from vrungpu_gateway.engine.kernels import specs as kernelspecs
from vrungpu_gateway.engine.limits import RequestLimits


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


RUN_FIELDS = schema.object_schema(wire.RunRequest)["properties"]
FORM_TEXT = {"type": "string", "pattern": wire.NO_NUL}  # other fields: ignored, but no NUL
PROJECT_UPLOAD = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "a .zip project or a .py file, told apart by the file name",
        },
        "entry_point": {
            "type": "string",
            "default": "main.py",
            "pattern": wire.NO_NUL,
            "description": "in a .zip",
        },
        **{
            k: RUN_FIELDS[k]
            for k in (
                "timeout",
                "gpu_id",
                "gpus",
                "device",
                "name",
                "priority",
                "env",
                "save_model",
                "model_name",
            )
        },
        "args": {
            "type": "string",
            "pattern": r"^\s*(?:[^\s\[\x00][^\x00]*)?$",
            "description": "arguments separated by spaces (or a JSON list of strings)",
        },
        "requirements": {
            "type": "string",
            "maxLength": 400,
            "pattern": r"^(?![\s\S]*[\x00$])(?!\s*-)(?![\s\S]*\s-)[\s\S]*$",
            "description": "requirements.txt text (one requirement a line; no options, no $)",
        },
    },
    "additionalProperties": FORM_TEXT,
    **wire.SHAPE_RULES["RunRequest"],
}
# The file part's name says what it is (.zip or .py); a generated one is named main.py.
PROJECT_ENCODING = {
    "file": {
        "headers": {
            "Content-Disposition": {
                "schema": {"type": "string"},
                "example": 'form-data; name="file"; filename="main.py"',
            }
        }
    }
}


PROGRESS_UPDATE = {
    "type": "object",
    "required": ["progress"],
    "properties": {
        "progress": {
            "type": "number",
            "minimum": 0,
            "maximum": 100,
            "description": "percent (a value outside 0-100 is clamped)",
        },
        "message": {"type": "string", "pattern": wire.NO_NUL},
    },
}


# api/models.py's text fields: stripped, bounded, no control characters (but description).
ONE_LINE = r"^[^\x00-\x1f\x7f]*$"
NAME = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"  # and not blank
MODEL_META = {
    "name": {
        "type": "string",
        "maxLength": 200,
        "pattern": NAME,
        "description": "versions count up per name among the owner's models",
    },
    "model_type": {
        "type": "string",
        "maxLength": 100,
        "pattern": ONE_LINE,
        "description": "e.g. classifier",
    },
    "framework": {
        "type": "string",
        "maxLength": 100,
        "pattern": ONE_LINE,
        "description": "guessed from the file suffix if absent",
    },
    "description": {"type": "string", "maxLength": 10_000, "pattern": wire.NO_NUL},
}
METRICS = {
    "type": "object",
    "propertyNames": {"pattern": wire.NO_NUL},
    "additionalProperties": _ref("JsonValue"),
    "maxProperties": 100,
    "description": "at most 64 KB of JSON",
}
TASK_REF = {"type": "string", "maxLength": 64, "pattern": ONE_LINE}
# What api/jsonin.py lets into any JSON body: keys without NUL, numbers that a 64-bit integer or
# a double holds, strings without NUL (OpaqueJson: NUL allowed, data for user code only).
INT64 = {"minimum": -(2**63), "maximum": 2**63 - 1}


def _json_value(name: str, string: dict[str, Any]) -> dict[str, Any]:
    return {
        "anyOf": [
            {
                "type": "object",
                "propertyNames": {"pattern": wire.NO_NUL},
                "additionalProperties": _ref(name),
            },
            {"type": "array", "items": _ref(name)},
            {"type": "string", **string},
            {"type": "number", **INT64},
            {"type": "boolean"},
            {"type": "null"},
        ],
        "description": "any JSON, nested at most 64 deep",
    }


JSON_VALUES = {
    "JsonValue": _json_value("JsonValue", {"pattern": wire.NO_NUL}),
    "OpaqueJson": _json_value("OpaqueJson", {}),
}
# Every JSON request body: known fields as described, others ignored (but still JSON as above).
JSON_BODIES = (
    "RunRequest",
    "ProgressUpdate",
    "ModelFromTask",
    "ModelUpdate",
    "InferenceRequest",
    "KernelStart",
)
OTHER_FIELDS = {
    "propertyNames": {"pattern": wire.NO_NUL},
    "additionalProperties": _ref("JsonValue"),
}
RUN_RULES = wire.FIELD_RULES["RunRequest"]
INFERENCE_OPTIONS: dict[str, Any] = {
    "timeout": {"type": "number", **RUN_RULES["timeout"], "description": "seconds; default 300"},
    "gpu_id": {"type": "integer", **RUN_RULES["gpu_id"]},
    "device": {"type": "string", "enum": ["auto", "gpu", "cpu"]},
    "priority": {"type": "integer", **RUN_RULES["priority"]},
    "name": {"type": "string", **RUN_RULES["name"]},
}
MODEL_SCHEMAS: dict[str, Any] = {
    "ModelUpload": {
        "type": "object",
        "required": ["name", "model_file"],
        "properties": {
            **MODEL_META,
            "model_file": {
                "type": "string",
                "format": "binary",
                "description": "the artifact, stored by its basename",
            },
            "files": {
                "type": "array",
                "items": {"type": "string", "format": "binary"},
                "maxItems": 1,
                "description": "companion files (handler.py, model.py, ...), any field name; "
                "several under distinct file names",
            },
            "metrics": {**METRICS, "description": "a JSON object (as the part's text)"},
            "task_id": {**TASK_REF, "description": "lineage: the task that produced it"},
            "unpack": {
                "type": "boolean",
                "description": "model_file is a .zip of a folder (and there are no files)",
            },
        },
        "additionalProperties": FORM_TEXT,
        "not": {"required": ["unpack", "files"], "properties": {"unpack": {"const": True}}},
    },
    "ModelFromTask": {
        "type": "object",
        "required": ["name", "task_id"],
        "properties": {
            **MODEL_META,
            "task_id": {**TASK_REF, "pattern": NAME, "description": "a finished task"},
            "path": {
                "type": "string",
                "maxLength": 1000,
                "pattern": ONE_LINE,
                "description": "file or folder in its workspace "
                "(default: its newest model file); handler.py and *.py/*.json beside a file "
                "are copied too",
            },
            "metrics": METRICS,
        },
    },
    "ModelUpdate": {
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["ready", "archived"]},
            "description": MODEL_META["description"],
            "metrics": METRICS,
        },
        "anyOf": [{"required": [name]} for name in ("status", "description", "metrics")],
        "description": "at least one of status, description, metrics",
    },
    "InferenceRequest": {
        "type": "object",
        "required": ["input_data"],
        "properties": {
            "input_data": {
                **_ref("OpaqueJson"),
                "not": {"type": "null"},
                "description": "any JSON but null: what the model's predict() receives",
            },
            "sync": {"type": "boolean", "description": "wait and return the task with result"},
            **INFERENCE_OPTIONS,
        },
        "allOf": wire.SHAPE_RULES["RunRequest"]["allOf"][:1],  # gpu_id not with device cpu
    },
}


KERNEL_SCHEMAS: dict[str, Any] = {
    "KernelStart": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "kernelspec (default: the default one)"},
            "env": {"type": "object", **wire.FIELD_RULES["RunRequest"]["env"]},
            "session": {
                "type": "string",
                "maxLength": 200,
                "pattern": wire.NOT_BLANK,
                "description": "ours: get-or-create; a live kernel of this session is returned "
                "(200) instead of a new one (201)",
            },
            "gpu_id": {
                "type": "integer",
                "minimum": 0,
                "description": "ours: this GPU (one-GPU specs)",
            },
        },
        "not": {  # gpu_id picks the GPU of a one-GPU kernelspec only
            "required": ["gpu_id", "name"],
            "properties": {"name": {"not": {"enum": ["vrungpu-1gpu"]}}},
        },
    },
}


def _host_limits(schemas: dict[str, Any], gpu_count: int) -> dict[str, Any]:
    """This host's GPUs bound gpu_id and gpus; kernelspecs are named after them."""
    schemas = copy.deepcopy(schemas)
    for name in ("RunRequest", "ProjectUpload", "InferenceRequest", "KernelStart"):
        props = schemas[name]["properties"]
        props["gpu_id"]["maximum"] = gpu_count - 1  # none fits on a host without GPUs
        if "gpus" in props:
            props["gpus"]["maximum"] = max(gpu_count, 1)
        if gpu_count == 0 and "device" in props:
            props["device"]["enum"] = ["auto", "cpu"]
    schemas["KernelStart"]["properties"]["name"]["enum"] = kernelspecs.spec_names(gpu_count)
    return schemas


def _request_limits(schemas: dict[str, Any], limits: RequestLimits) -> dict[str, Any]:
    """The size limits (engine/limits.py) as lengths and counts, on the safe side: a character
    takes up to 4 bytes of UTF-8, and each variable or argument gets an equal share."""
    schemas = copy.deepcopy(schemas)
    share = limits.max_env_bytes // max(limits.max_env_vars, 1) // 5  # name + 4 bytes a char
    arg_chars = limits.max_args_bytes // max(limits.max_args, 1) // 4
    for name in ("RunRequest", "ProjectUpload", "KernelStart"):
        props = schemas[name]["properties"]
        env = props["env"]
        env["maxProperties"] = limits.max_env_vars
        env["propertyNames"] = {**env["propertyNames"], "maxLength": share}
        env["additionalProperties"] = {**env["additionalProperties"], "maxLength": share}
        if "code" in props:
            props["code"]["maxLength"] = limits.max_code_bytes // 4
        if props.get("args", {}).get("type") == "array":
            props["args"]["maxItems"] = limits.max_args
            props["args"]["items"] = {**props["args"]["items"], "maxLength": arg_chars}
    return schemas


def components(
    *, gpu_count: int | None = None, limits: RequestLimits | None = None
) -> dict[str, Any]:
    """Every schema of the document; with ``gpu_count`` and ``limits``, this gateway's."""
    schemas = {
        **schema.components(),  # the wire shapes, generated from vrungpu_gateway/wire.py
        "ProjectUpload": PROJECT_UPLOAD,
        "ProgressUpdate": PROGRESS_UPDATE,
        **MODEL_SCHEMAS,
        **KERNEL_SCHEMAS,
        **JSON_VALUES,
    }
    for name in JSON_BODIES:
        schemas[name] = {**schemas[name], **OTHER_FIELDS}
    if gpu_count is not None:
        schemas = _host_limits(schemas, gpu_count)
    if limits is not None:
        schemas = _request_limits(schemas, limits)
    return schemas

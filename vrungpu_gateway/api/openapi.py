"""The OpenAPI 3 description of every route; a test keeps it equal to the route table."""

from __future__ import annotations

import copy
from typing import Any, get_args

from vrungpu_gateway import __version__, wire
from vrungpu_gateway.api import schema
from vrungpu_gateway.engine.kernels import specs as kernelspecs

TASK_ID = {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}
QUERY_INT_MAX = 2**31 - 1  # BaseHandler.int_argument
MODEL_ID = {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _q(name: str, kind: str = "string", desc: str = "", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": {"type": kind, **extra},
        "description": desc,
    }


def _returns(shape: str | None) -> dict[str, Any]:
    if shape is None:
        return {"type": "object"}
    if shape.startswith("["):
        return {"type": "array", "items": schema.ref(shape.strip("[]"))}
    return schema.ref(shape)


def _op(
    summary: str,
    *,
    params: list[dict[str, Any]] | None = None,
    body: str | None = None,
    ok: int = 200,
    errors: tuple[int, ...] = (400, 401, 404),
    returns: str | None = None,
) -> dict[str, Any]:
    """One operation; ``returns`` names its answer's wire shape ("[Task]": an array of it)."""
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": params or [],
        "responses": {
            str(ok): {
                "description": "OK",
                "content": {"application/json": {"schema": _returns(returns)}},
            }
        },
    }
    for code in errors:
        op["responses"][str(code)] = {"$ref": "#/components/responses/Error"}
    if body == "json":
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/RunRequest"}}
            },
        }
    elif body == "multipart":
        op["requestBody"] = {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"$ref": "#/components/schemas/ProjectUpload"},
                    "encoding": PROJECT_ENCODING,
                }
            },
        }
    elif body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    return op


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _with_body(op: dict[str, Any], content: dict[str, Any]) -> dict[str, Any]:
    return {**op, "requestBody": {"required": True, "content": content}}


# The form's fields are text, read as the JSON fields of RunRequest (numbers, true/false, env
# as a JSON object); args and requirements are plain text there.
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

PATH = {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}
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


def _public(summary: str, *, ok: int = 200, **kwargs: Any) -> dict[str, Any]:
    """An operation that needs no token (the dashboard's files and its login probe)."""
    return {**_op(summary, ok=ok, errors=kwargs.pop("errors", ()), **kwargs), "security": []}


REDIRECT = {
    "summary": "Redirects to /dashboard/, keeping the query",
    "security": [],
    "responses": {
        "302": {
            "description": "to /dashboard/ (no body)",
            "headers": {"Location": {"schema": {"type": "string"}}},
        }
    },
}
# A plain HTTP GET of a WebSocket route (no upgrade) is refused by tornado with a short text.
NOT_AN_UPGRADE = {"description": "Not a WebSocket upgrade request", "content": {"text/html": {}}}

WS_PROTOCOL = """\
Upgrade to a WebSocket (token as `?token=` or an `Authorization` header; a browser page
from another origin needs `--allow-origin`). Every message is one JSON object.

Server to client: `{"type":"init","gpus":[...],"pool":{...},"tasks":[...]}` first (recent tasks
with `stdout`/`stderr` tails); `{"type":"gpu_update","gpus":[...],"pool":{...}}` every 2 s;
`{"type":"task_update","task":{...}}` on each status change and on progress (at most 5/s per
task); `{"type":"task_deleted","task_id"}`; output: for a client with no subscription every
line of every task as `{"type":"task_output","task_id","stream","line","offset"}`.

Client to server: `{"type":"subscribe","task_id":T,"offset":N}` (or
`"offsets":{"stdout":N,"stderr":M}`; byte offsets into the log files, as in
`GET /task/{id}/logs`) answers `{"type":"subscribed","task_id","offsets","task"}`, replays the
task's output from there and follows it live, as batches
`{"type":"task_output","task_id","stream","lines":[...],"offset":N}` (`offset`: just past the
last line), none lost or doubled; the task's terminal `task_update` comes after all its
output. `{"type":"unsubscribe","task_id":T}` answers `{"type":"unsubscribed","task_id"}`.
A client that does not keep up gets `{"type":"gap","task_id","stream","offset":N}`: lines after
`offset` were dropped (a subscription pauses; subscribe again from `offset` to resume).
Bad messages answer `{"type":"error","code","detail"}`."""

PATHS: dict[str, dict[str, Any]] = {
    "/": {"get": _op("Service status and storage paths", errors=(401,))},
    "/health": {"get": _public("Liveness (no token needed)")},
    "/gpu": {"get": _op("GPUs with live metrics and the task holding each", errors=(401,))},
    "/gpu/pool": {"get": _op("GPU allocations", errors=(401,))},
    "/stats": {"get": _op("Task, model and GPU statistics", errors=(401,))},
    "/whoami": {"get": _op("The user of the token", errors=(401,), returns="WhoAmI")},
    "/run/sync": {"post": _op("Run code and wait for the end", body="json", returns="TaskDetail")},
    "/run/async": {
        "post": _op(
            "Queue code; returns the task id at once", body="json", ok=202, returns="TaskAccepted"
        )
    },
    "/run/project": {
        "post": _op(
            "Upload a .zip/.py project and run its entry point",
            body="multipart",
            ok=202,
            errors=(400, 401, 413),
            returns="TaskAccepted",
        )
    },
    "/tasks": {
        "get": _op(
            "List tasks, newest first: a bare JSON array (as the seed server); the total in "
            "X-Total-Count, the other pages in Link (rel next/prev/first/last)",
            params=[
                _q("status", enum=list(get_args(wire.Status))),
                _q("task_type", enum=["training", "inference"]),
                _q("device", enum=["gpu", "cpu"]),
                _q("limit", "integer", default=50, minimum=1, maximum=1000),
                _q("offset", "integer", default=0, minimum=0, maximum=QUERY_INT_MAX),
            ],
            errors=(400, 401),
            returns="[Task]",
        )
    },
    "/task/{task_id}": {
        "get": _op("One task with its output tails", params=[TASK_ID], returns="TaskDetail"),
        "delete": _op("Cancel if live, then delete row, workspace and logs", params=[TASK_ID]),
    },
    "/task/{task_id}/cancel": {
        "post": _op("Cancel a queued or running task", params=[TASK_ID], errors=(401, 404, 409))
    },
    "/task/{task_id}/progress": {
        "put": _with_body(
            _op("Set progress by hand", params=[TASK_ID], errors=(400, 401, 404, 409)),
            {"application/json": {"schema": _ref("ProgressUpdate")}},
        )
    },
    "/task/{task_id}/logs": {
        "get": _op(
            "Read output by byte offset or last lines",
            params=[
                TASK_ID,
                _q("stream", enum=["stdout", "stderr", "all"]),
                _q(
                    "offset",
                    "integer",
                    "byte offset (stream stdout or stderr; not with tail)",
                    minimum=0,
                    maximum=QUERY_INT_MAX,
                ),
                _q("tail", "integer", "the last N lines", minimum=0, maximum=QUERY_INT_MAX),
            ],
        )
    },
    "/task/{task_id}/files": {"get": _op("List the task's workspace files", params=[TASK_ID])},
    "/task/{task_id}/files/{path}": {
        "get": _op(
            "Download one workspace file",
            params=[
                TASK_ID,
                {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
        )
    },
    "/metrics": {
        "get": {
            **_op(
                "Prometheus metrics (text exposition; no token with --metrics-public)",
                errors=(401,),
            ),
            "responses": {
                "200": {"description": "metrics", "content": {"text/plain": {}}},
                "401": {"$ref": "#/components/responses/Error"},
            },
        }
    },
    "/openapi.json": {"get": _op("This document", errors=(401,))},
    "/docs": {
        "get": {
            **_op("A page that renders this document"),
            "responses": {
                "200": {"description": "the page", "content": {"text/html": {}}},
                "401": {"$ref": "#/components/responses/Error"},
            },
        }
    },
    "/ws": {
        "get": {
            "summary": "WebSocket: live GPU state, task updates and task output",
            "description": WS_PROTOCOL,
            "parameters": [_q("token", desc="the API token (or an Authorization header)")],
            "responses": {
                "101": {"description": "Switching Protocols: the WebSocket is open"},
                "400": NOT_AN_UPGRADE,
                "401": {"$ref": "#/components/responses/Error"},
                "403": {"description": "A browser Origin that is not allowed"},
            },
        }
    },
    # The dashboard's files hold no data: served without a token (the page sends it itself).
    "/dashboard": {"get": REDIRECT, "head": REDIRECT},
    "/dashboard/session": {
        "get": _public("Whether the request's token is accepted: {auth_required, authenticated}")
    },
    "/dashboard/{path}": {
        "get": _public(
            "The web dashboard: index.html and its assets", params=[PATH], errors=(404,)
        ),
        "head": _public("Headers of a dashboard file", params=[PATH], errors=(404,)),
    },
}


# -- model registry, inference and warm workers ---------------------------------------------------
# api/models.py's text fields: stripped, bounded, no control characters (but description).
ONE_LINE = r"^[^\x00-\x1f\x7f]*$"
NAME = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"  # and not blank
MODEL_META = {
    "name": {
        "type": "string",
        "maxLength": 200,
        "pattern": NAME,
        "description": "versions count up per name",
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
            "unpack": {"type": "boolean", "description": "model_file is a .zip of a folder"},
        },
        "additionalProperties": FORM_TEXT,
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


PATHS.update(
    {
        "/models": {
            "get": _op(
                "List models, newest first",
                params=[
                    _q("name"),
                    _q("status", enum=["ready", "archived"]),
                    _q("limit", "integer", default=100, minimum=1, maximum=1000),
                    _q("offset", "integer", default=0, minimum=0, maximum=QUERY_INT_MAX),
                ],
                errors=(400, 401),
                returns="ModelList",
            )
        },
        "/models/workers": {
            "get": _op("Warm model workers: pid, model, slot, requests", errors=(401,))
        },
        "/model/register": {
            "post": _with_body(
                _op(
                    "Register a model: upload it, or name a file/folder of a finished task",
                    ok=201,
                    errors=(400, 401, 404, 409, 413),
                    returns="Model",
                ),
                {
                    "multipart/form-data": {"schema": _ref("ModelUpload")},
                    "application/json": {"schema": _ref("ModelFromTask")},
                },
            )
        },
        "/model/{model_id}": {
            "get": _op("One model (with `warm`)", params=[MODEL_ID], returns="Model"),
            "patch": _with_body(
                _op("Archive, restore or describe a model", params=[MODEL_ID]),
                {"application/json": {"schema": _ref("ModelUpdate")}},
            ),
            "delete": _op(
                "Unload its warm workers, then delete its row and files", params=[MODEL_ID]
            ),
        },
        "/model/{model_id}/download": {
            "get": {
                **_op(
                    "The artifact (a folder as a zip); sha256 in X-Content-SHA256",
                    params=[MODEL_ID, _q("file", desc="one stored file instead, e.g. handler.py")],
                ),
                "responses": {
                    "200": {"description": "the file", "content": {"application/octet-stream": {}}},
                    "401": {"$ref": "#/components/responses/Error"},
                    "404": {"$ref": "#/components/responses/Error"},
                },
            }
        },
        "/model/{model_id}/inference": {
            "post": _with_body(
                _op(
                    "Predict with a ready model (202 with task_id; 200 with the task when sync)",
                    params=[MODEL_ID],
                    ok=202,
                    errors=(400, 401, 404, 409),
                ),
                {"application/json": {"schema": _ref("InferenceRequest")}},
            )
        },
    }
)


# -- remote kernels: the Jupyter Kernel Gateway protocol ------------------------------------------
KERNEL_ID = {"name": "kernel_id", "in": "path", "required": True, "schema": {"type": "string"}}
KERNEL_CHANNELS = """\
Upgrade to a WebSocket (token as `?token=` or an `Authorization` header) speaking Jupyter's
kernel messages as JSON text, as jupyter_server does: a client message carries `channel`
(`shell`, `control` or `stdin`; default `shell`), `header`, `parent_header`, `metadata`,
`content`; every kernel message on `iopub`, `shell`, `control` and `stdin` comes back as JSON with
`channel` set and dates as ISO strings. A message with binary buffers uses jupyter_server's
legacy binary framing. A malformed client message is logged and dropped; the connection stays."""
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
PATHS.update(
    {
        "/api/kernelspecs": {
            "get": _op("Kernelspecs: vrungpu-cpu and vrungpu-{K}gpu for K = 1..N", errors=(401,))
        },
        "/api/kernelspecs/{name}": {
            "get": _op(
                "One kernelspec",
                params=[
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                errors=(401, 404),
            )
        },
        "/api/kernels": {
            "get": _op(
                "Live kernels (Jupyter's model plus session, gpus, device, created_at, idle_s)",
                params=[_q("session", desc="only this session's kernel")],
                errors=(401,),
                returns="[Kernel]",
            ),
            "post": _with_body(
                _op(
                    "Start a kernel; it waits for its GPUs up to --kernel-queue-timeout (503 then, "
                    "naming the holders); 409 over --max-kernels",
                    ok=201,
                    errors=(400, 401, 404, 409, 503),
                    returns="Kernel",
                ),
                {"application/json": {"schema": _ref("KernelStart")}},
            ),
        },
        "/api/kernels/{kernel_id}": {
            "get": _op("One kernel", params=[KERNEL_ID], errors=(401, 404), returns="Kernel"),
            "delete": {
                **_op("Shut the kernel down and free its GPUs", params=[KERNEL_ID]),
                "responses": {
                    "204": {"description": "shut down"},
                    "401": {"$ref": "#/components/responses/Error"},
                    "404": {"$ref": "#/components/responses/Error"},
                    "409": {"$ref": "#/components/responses/Error"},
                },
            },
        },
        "/api/kernels/{kernel_id}/interrupt": {
            "post": {
                **_op("SIGINT to the kernel (KeyboardInterrupt in the running cell)"),
                "parameters": [KERNEL_ID],
                "responses": {
                    "204": {"description": "interrupted"},
                    "401": {"$ref": "#/components/responses/Error"},
                    "404": {"$ref": "#/components/responses/Error"},
                    "409": {"$ref": "#/components/responses/Error"},
                },
            }
        },
        "/api/kernels/{kernel_id}/restart": {
            "post": _op(
                "A new kernel process: same id, channels, workspace and GPUs",
                params=[KERNEL_ID],
                errors=(401, 404, 409, 503),
            )
        },
        "/api/kernels/{kernel_id}/channels": {
            "get": {
                "summary": "WebSocket: the kernel's channels (Jupyter messages)",
                "description": KERNEL_CHANNELS,
                "parameters": [KERNEL_ID, _q("token", desc="the API token")],
                "responses": {
                    "101": {"description": "Switching Protocols: the WebSocket is open"},
                    "400": NOT_AN_UPGRADE,
                    "401": {"$ref": "#/components/responses/Error"},
                    "404": {"$ref": "#/components/responses/Error"},
                },
            }
        },
    }
)


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


def build_spec(
    extra_paths: dict[str, dict[str, Any]] | None = None, *, gpu_count: int | None = None
) -> dict[str, Any]:
    """The document; with ``gpu_count``, the GPU fields are bounded by this host's GPUs."""
    paths = dict(PATHS)
    paths.update(extra_paths or {})
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
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "VrunGPU gateway",
            "version": __version__,
            "description": "Run Python on a GPU host's free GPUs. Send the token as "
            "`Authorization: token <T>` or `?token=<T>`.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "token": {"type": "apiKey", "in": "header", "name": "Authorization"}
            },
            "schemas": schemas,
            "responses": {
                "Error": {
                    "description": "Error",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "detail": {"type": "string"},
                                    "code": {"type": "string"},
                                },
                            }
                        }
                    },
                }
            },
        },
        "security": [{"token": []}],
    }

"""The OpenAPI 3 description of every route; a test keeps it equal to the route table."""

from __future__ import annotations

from typing import Any, get_args

from vrungpu_gateway import __version__, wire
from vrungpu_gateway.api import request_schemas, schema
from vrungpu_gateway.engine.limits import RequestLimits

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
                    "encoding": request_schemas.PROJECT_ENCODING,
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
PATH = {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}
# The log query's parameters depend on each other: one exploded object parameter says how.
LOG_QUERY = {
    "name": "read",
    "in": "query",
    "style": "form",
    "explode": True,
    "description": "stream (default all); offset: a byte offset into stdout or stderr; tail: "
    "the last N lines; offset and tail not together",
    "schema": {
        "type": "object",
        "properties": {
            "stream": {"type": "string", "enum": ["stdout", "stderr", "all"]},
            "offset": {"type": "integer", "minimum": 0, "maximum": QUERY_INT_MAX},
            "tail": {"type": "integer", "minimum": 0, "maximum": QUERY_INT_MAX},
        },
        "additionalProperties": False,
        "not": {"required": ["offset", "tail"]},
        "anyOf": [
            {"not": {"required": ["offset"]}},
            {"required": ["stream"], "properties": {"stream": {"enum": ["stdout", "stderr"]}}},
        ],
    },
}
ERROR = {"$ref": "#/components/responses/Error"}
# engine/paths.py safe_relative: not absolute (nor C:), no `..` part, not empty, no NUL.
RELATIVE_PATH = (
    r"^(?![/\\])(?![\s\S]:)(?![\s\S]*(?:^|[/\\])\.\.(?:[/\\]|$))(?=[\s\S]*[^/\\.])[^\x00]+$"
)
DOWNLOAD = {
    "200": {"description": "the file", "content": {"application/octet-stream": {}}},
    "400": ERROR,
    "401": ERROR,
    "404": ERROR,
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
            params=[TASK_ID, LOG_QUERY],
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
        | {"responses": DOWNLOAD},
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
INFERENCE_ANSWERS = {
    "200": {
        "description": "sync: the finished task with its result",
        "content": {"application/json": {"schema": _ref("TaskDetail")}},
    },
    "202": {
        "description": "the task, started (with model_id)",
        "content": {"application/json": {"schema": _ref("TaskAccepted")}},
    },
    **{str(code): ERROR for code in (400, 401, 404, 409, 503)},
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
                    params=[
                        MODEL_ID,
                        _q(
                            "file",
                            desc="one stored file instead, e.g. handler.py (a relative path)",
                            pattern=RELATIVE_PATH,
                        ),
                    ],
                ),
                "responses": DOWNLOAD,
            }
        },
        "/model/{model_id}/inference": {
            "post": _with_body(
                _op(
                    "Predict with a ready model (202 with task_id; 200 with the task when sync)",
                    params=[MODEL_ID],
                    ok=202,
                    errors=(400, 401, 404, 409, 503),
                ),
                {"application/json": {"schema": _ref("InferenceRequest")}},
            )
            | {"responses": INFERENCE_ANSWERS},
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


def _with_body_errors(paths: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every operation that takes a body may answer 413 (too large: --max-body-mb and the other
    limits) and, for a JSON body, 415 (another media type, e.g. a browser's text/plain)."""
    error = {"$ref": "#/components/responses/Error"}
    out: dict[str, dict[str, Any]] = {}
    for path, ops in paths.items():
        out[path] = {}
        for method, op in ops.items():
            if isinstance(op, dict) and "requestBody" in op:
                extra = {"413": error}
                if "application/json" in op["requestBody"]["content"]:
                    extra["415"] = error
                op = {**op, "responses": {**op["responses"], **extra}}
            out[path][method] = op
    return out


def build_spec(
    extra_paths: dict[str, dict[str, Any]] | None = None,
    *,
    gpu_count: int | None = None,
    limits: RequestLimits | None = None,
) -> dict[str, Any]:
    """The document; with ``gpu_count`` and ``limits``, bounded by this gateway's GPUs and
    request limits."""
    paths = _with_body_errors({**PATHS, **(extra_paths or {})})
    schemas = request_schemas.components(gpu_count=gpu_count, limits=limits)
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

"""The OpenAPI 3 description of every route; a test keeps it equal to the route table."""

from __future__ import annotations

from typing import Any

from vrungpu_gateway import __version__
from vrungpu_gateway.api import schema

TASK_ID = {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}
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
                "multipart/form-data": {"schema": {"$ref": "#/components/schemas/ProjectUpload"}}
            },
        }
    elif body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    return op


PROJECT_UPLOAD = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": ".zip or .py"},
        "entry_point": {"type": "string", "default": "main.py"},
        **{
            k: {"type": "string"}
            for k in (
                "timeout",
                "gpu_id",
                "gpus",
                "device",
                "name",
                "args",
                "priority",
                "env",
                "save_model",
                "model_name",
            )
        },
    },
}

PATH = {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}


def _public(summary: str, *, ok: int = 200, **kwargs: Any) -> dict[str, Any]:
    """An operation that needs no token (the dashboard's files and its login probe)."""
    return {**_op(summary, ok=ok, errors=kwargs.pop("errors", ()), **kwargs), "security": []}


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
                _q("status"),
                _q("task_type"),
                _q("device"),
                _q("limit", "integer", default=50),
                _q("offset", "integer", default=0),
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
        "put": _op(
            "Set progress by hand", params=[TASK_ID], body="object", errors=(400, 401, 404, 409)
        )
    },
    "/task/{task_id}/logs": {
        "get": _op(
            "Read output by byte offset or last lines",
            params=[
                TASK_ID,
                _q("stream", enum=["stdout", "stderr", "all"]),
                _q("offset", "integer"),
                _q("tail", "integer"),
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
    "/docs": {"get": _op("A page that renders this document", errors=(401,))},
    "/ws": {
        "get": {
            "summary": "WebSocket: live GPU state, task updates and task output",
            "description": WS_PROTOCOL,
            "parameters": [_q("token", desc="the API token (or an Authorization header)")],
            "responses": {
                "101": {"description": "Switching Protocols: the WebSocket is open"},
                "401": {"$ref": "#/components/responses/Error"},
                "403": {"description": "A browser Origin that is not allowed"},
            },
        }
    },
    # The dashboard's files hold no data: served without a token (the page sends it itself).
    "/dashboard": {
        "get": _public("Redirects to /dashboard/, keeping the query", ok=302),
        "head": _public("Redirects to /dashboard/, keeping the query", ok=302),
    },
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
def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


MODEL_META = {
    "name": {"type": "string", "description": "versions count up per name"},
    "model_type": {"type": "string", "description": "e.g. classifier"},
    "framework": {"type": "string", "description": "guessed from the file suffix if absent"},
    "description": {"type": "string"},
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
                "description": "companion files (handler.py, model.py, ...), any field name",
            },
            "metrics": {"type": "string", "description": "a JSON object"},
            "task_id": {"type": "string", "description": "lineage: the task that produced it"},
            "unpack": {"type": "boolean", "description": "model_file is a .zip of a folder"},
        },
    },
    "ModelFromTask": {
        "type": "object",
        "required": ["name", "task_id"],
        "properties": {
            **MODEL_META,
            "task_id": {"type": "string", "description": "a finished task"},
            "path": {
                "type": "string",
                "description": "file or folder in its workspace "
                "(default: its newest model file); handler.py and *.py/*.json beside a file "
                "are copied too",
            },
            "metrics": {"type": "object"},
        },
    },
    "ModelUpdate": {
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["ready", "archived"]},
            "description": {"type": "string"},
            "metrics": {"type": "object"},
        },
    },
    "InferenceRequest": {
        "type": "object",
        "required": ["input_data"],
        "properties": {
            "input_data": {"description": "any JSON: what the model's predict() receives"},
            "sync": {"type": "boolean", "description": "wait and return the task with result"},
            "timeout": {"type": "number", "description": "seconds; default 300"},
            "gpu_id": {"type": "integer"},
            "device": {"type": "string", "enum": ["auto", "gpu", "cpu"]},
            "priority": {"type": "integer"},
            "name": {"type": "string"},
        },
    },
}


def _with_body(op: dict[str, Any], content: dict[str, Any]) -> dict[str, Any]:
    return {**op, "requestBody": {"required": True, "content": content}}


PATHS.update(
    {
        "/models": {
            "get": _op(
                "List models, newest first",
                params=[
                    _q("name"),
                    _q("status", enum=["ready", "archived"]),
                    _q("limit", "integer", default=100),
                    _q("offset", "integer", default=0),
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
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "session": {
                "type": "string",
                "description": "ours: get-or-create; a live kernel of this session is returned "
                "(200) instead of a new one (201)",
            },
            "gpu_id": {"type": "integer", "description": "ours: this GPU (one-GPU specs)"},
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
                    "401": {"$ref": "#/components/responses/Error"},
                    "404": {"$ref": "#/components/responses/Error"},
                },
            }
        },
    }
)


def build_spec(extra_paths: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    paths = dict(PATHS)
    paths.update(extra_paths or {})
    return {
        "openapi": "3.0.3",
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
            "schemas": {
                **schema.components(),  # the wire shapes, generated from vrungpu_gateway/wire.py
                "ProjectUpload": PROJECT_UPLOAD,
                **MODEL_SCHEMAS,
                **KERNEL_SCHEMAS,
            },
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

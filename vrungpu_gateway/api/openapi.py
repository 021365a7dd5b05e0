"""The OpenAPI 3 description of every route; a test keeps it equal to the route table."""

from __future__ import annotations

from typing import Any

from vrungpu_gateway import __version__

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


def _op(
    summary: str,
    *,
    params: list[dict[str, Any]] | None = None,
    body: str | None = None,
    ok: int = 200,
    errors: tuple[int, ...] = (400, 401, 404),
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": params or [],
        "responses": {
            str(ok): {
                "description": "OK",
                "content": {"application/json": {"schema": {"type": "object"}}},
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


RUN_REQUEST = {
    "type": "object",
    "required": ["code"],
    "properties": {
        "code": {"type": "string", "description": "Python source to run"},
        "name": {"type": "string"},
        "timeout": {"type": "number", "description": "seconds (> 0); default 3600"},
        "gpu_id": {"type": "integer", "description": "run on exactly this GPU"},
        "gpus": {"type": "integer", "minimum": 1, "description": "how many GPUs (default 1)"},
        "device": {"type": "string", "enum": ["auto", "gpu", "cpu"]},
        "env": {"type": "object", "additionalProperties": {"type": "string"}},
        "args": {"type": "array", "items": {"type": "string"}},
        "priority": {"type": "integer", "description": "higher runs first"},
        "save_model": {"type": "boolean"},
        "model_name": {"type": "string"},
    },
}
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

PATHS: dict[str, dict[str, Any]] = {
    "/": {"get": _op("Service status and storage paths", errors=(401,))},
    "/health": {"get": _op("Liveness (no token needed)", errors=())},
    "/gpu": {"get": _op("GPUs with live metrics and the task holding each", errors=(401,))},
    "/gpu/pool": {"get": _op("GPU allocations", errors=(401,))},
    "/stats": {"get": _op("Task, model and GPU statistics", errors=(401,))},
    "/run/sync": {"post": _op("Run code and wait for the end", body="json")},
    "/run/async": {"post": _op("Queue code; returns the task id at once", body="json", ok=202)},
    "/run/project": {
        "post": _op(
            "Upload a .zip/.py project and run its entry point",
            body="multipart",
            ok=202,
            errors=(400, 401, 413),
        )
    },
    "/tasks": {
        "get": _op(
            "List tasks, newest first",
            params=[
                _q("status"),
                _q("task_type"),
                _q("device"),
                _q("limit", "integer", default=50),
                _q("offset", "integer", default=0),
            ],
            errors=(400, 401),
        )
    },
    "/task/{task_id}": {
        "get": _op("One task with its output tails", params=[TASK_ID]),
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
    "/openapi.json": {"get": _op("This document", errors=(401,))},
    "/docs": {"get": _op("A page that renders this document", errors=(401,))},
}


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
            "schemas": {"RunRequest": RUN_REQUEST, "ProjectUpload": PROJECT_UPLOAD},
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

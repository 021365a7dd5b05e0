"""The wire shapes: every JSON record and event the gateway sends, as typed dicts.

One module for the shapes of tasks, models, kernels and ``/ws`` events, free of server
dependencies so the client side (``vrungpu_magic``) can import it. The engine presents its
records through one function each (``engine/present.py``), the handlers serialize what those
return, and ``api/openapi.py`` generates the document's schemas from these classes.
"""

# No `from __future__ import annotations` here: TypedDict reads NotRequired[...] from the
# evaluated annotations (the required keys of the generated schemas come from it).
from typing import Any, Literal, NotRequired, TypedDict

Status = Literal["pending", "queued", "running", "completed", "failed", "cancelled"]
FailureReasonName = Literal["timeout", "exit_code", "cancelled", "lost", "spawn_error"]
StreamName = Literal["stdout", "stderr"]


class Task(TypedDict):
    """A task without its output: list items, ``task_update`` events."""

    task_id: str
    name: str | None
    status: Status
    task_type: Literal["training", "inference"]
    device: Literal["gpu", "cpu"]
    gpu_id: int | None
    gpu_ids: list[int]
    gpus: int
    priority: int
    created_at: str
    started_at: str | None
    completed_at: str | None
    duration: float | None
    return_code: int | None
    error: str | None
    failure_reason: FailureReasonName | None
    progress: float
    progress_message: str | None
    stdout_log_truncated: bool
    stderr_log_truncated: bool
    entry_point: str
    timeout: float
    args: list[str]
    model_id: str | None
    model_name: str | None
    save_model: bool
    result: Any
    queue_position: int | None
    owner: str | None


class TaskDetail(Task):
    """``GET /task/{id}`` and ``/run/sync``: the task with the tails of its output."""

    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool


class TaskAccepted(TypedDict):
    """``/run/async``, ``/run/project`` and ``/model/{id}/inference`` without ``sync``."""

    task_id: str
    status: Status
    message: str


class Model(TypedDict):
    """A registered model (the seed's fields first)."""

    model_id: str
    name: str
    version: int
    model_type: str | None
    framework: str | None
    status: Literal["ready", "archived"]
    file_size: int
    created_at: str
    file_name: str | None
    kind: Literal["file", "dir"]
    sha256: str | None
    handler: str
    files: list[str]
    task_id: str | None
    metrics: Any
    description: str | None
    download_url: str
    warm: bool
    owner: str | None


class ModelList(TypedDict):
    models: list[Model]
    total: int
    limit: int
    offset: int


class Kernel(TypedDict):
    """A remote kernel as ``/api/kernels`` shows it: Jupyter's model plus our fields."""

    id: str
    name: str
    last_activity: str | None
    execution_state: str
    connections: int
    session: str | None
    gpus: list[int]
    device: Literal["gpu", "cpu"]
    created_at: str
    idle_s: float
    queue_position: int | None
    owner: str | None


class WhoAmI(TypedDict):
    """``GET /whoami``: the user the request's token belongs to."""

    name: str
    admin: bool


class RunRequest(TypedDict):
    """The body of ``/run/sync`` and ``/run/async``."""

    code: str
    name: NotRequired[str]
    timeout: NotRequired[float]
    gpu_id: NotRequired[int]
    gpus: NotRequired[int]
    device: NotRequired[Literal["auto", "gpu", "cpu"]]
    env: NotRequired[dict[str, str]]
    args: NotRequired[list[str]]
    priority: NotRequired[int]
    save_model: NotRequired[bool]
    model_name: NotRequired[str]
    requirements: NotRequired[list[str]]


# -- /ws events, server to client ------------------------------------------------------------
class InitEvent(TypedDict):
    type: Literal["init"]
    gpus: list[dict[str, Any]]
    pool: dict[str, Any]
    tasks: list[TaskDetail]


class GpuUpdateEvent(TypedDict):
    type: Literal["gpu_update"]
    gpus: list[dict[str, Any]]
    pool: dict[str, Any]


class TaskUpdateEvent(TypedDict):
    type: Literal["task_update"]
    task: Task


class TaskOutputLine(TypedDict):
    """The firehose's single line (the seed's message, plus the offset just past it)."""

    type: Literal["task_output"]
    task_id: str
    stream: StreamName
    line: str
    offset: int


class TaskOutputBatch(TypedDict):
    """A subscription's lines; ``offset`` is just past the last one."""

    type: Literal["task_output"]
    task_id: str
    stream: StreamName
    lines: list[str]
    offset: int


class GapEvent(TypedDict):
    type: Literal["gap"]
    task_id: str
    stream: StreamName
    offset: int
    offsets: NotRequired[dict[str, int]]


# Field descriptions for the generated document, by shape.
FIELD_DOCS: dict[str, dict[str, str]] = {
    "RunRequest": {
        "code": "Python source to run",
        "timeout": "seconds (> 0); default --default-timeout (3600)",
        "gpu_id": "run on exactly this GPU",
        "gpus": "how many GPUs (default 1)",
        "priority": "higher runs first",
        "requirements": "pip requirements installed into a cached environment for the job",
    },
    "Task": {
        "queue_position": "1-based place in the queue while queued, else null",
        "progress": "0-100, from [PROGRESS:pct:msg] lines and tqdm bars",
        "stdout_log_truncated": "the log reached --max-log-mb; later output was dropped",
    },
    "TaskDetail": {"stdout": "the tail of the output (see stdout_truncated)"},
    "WhoAmI": {"admin": "sees and acts on every user's tasks, models and kernels"},
}

# What the gateway accepts beyond the types (JSON Schema keywords, OpenAPI 3.1), by shape and
# field; the generated document carries them so that a schema-valid request is one the gateway
# takes. The bounds are the gateway's (api/schemas.py, engine/environment.py, engine/pyenvs.py).
ENV_NAME = (  # a shell name that the gateway does not set itself
    r"^(?!VRUNGPU_|(?:CUDA_VISIBLE_DEVICES|CUDA_DEVICE_ORDER|PYTHONUNBUFFERED)$)"
    r"[A-Za-z_][A-Za-z0-9_]*$"
)
NO_NUL = r"^[^\x00]*$"  # a JSON body holds no NUL character (but in opaque data)
NOT_BLANK = r"^[^\x00]*[^\s\x00][^\x00]*$"
REQUIREMENT = r"^(?![\s\S]*[\x00\r\n$])\s*[^\s\-][\s\S]*$"  # one line, no $, not an option
FIELD_RULES: dict[str, dict[str, dict[str, Any]]] = {
    "RunRequest": {
        "code": {"pattern": NOT_BLANK},
        "name": {"maxLength": 200, "pattern": NO_NUL},
        "timeout": {"exclusiveMinimum": 0, "maximum": 7 * 24 * 3600},
        "gpu_id": {"minimum": 0},
        "gpus": {"minimum": 1},
        "priority": {"minimum": -(2**63 - 1), "maximum": 2**63 - 1},
        "env": {
            "propertyNames": {"pattern": ENV_NAME},
            "additionalProperties": {"type": "string", "pattern": NO_NUL},
        },
        "model_name": {"minLength": 1, "maxLength": 200, "pattern": NO_NUL},
        "args": {"items": {"type": "string", "pattern": NO_NUL}},
        "requirements": {
            "maxItems": 200,
            "items": {"type": "string", "maxLength": 500, "pattern": REQUIREMENT},
        },
    },
    "Task": {"progress": {"minimum": 0, "maximum": 100}},
}
# Rules across fields, by shape (`not` and `anyOf` say them).
SHAPE_RULES: dict[str, dict[str, Any]] = {
    "RunRequest": {
        "allOf": [
            {  # gpu_id picks a GPU: not with device "cpu", not with more than one GPU
                "not": {
                    "required": ["gpu_id", "device"],
                    "properties": {"device": {"enum": ["cpu"]}},
                }
            },
            {"not": {"required": ["gpu_id", "gpus"], "properties": {"gpus": {"minimum": 2}}}},
            {  # save_model needs a model_name
                "anyOf": [
                    {
                        "not": {
                            "required": ["save_model"],
                            "properties": {"save_model": {"enum": [True]}},
                        }
                    },
                    {"required": ["model_name"]},
                ]
            },
        ]
    }
}

WIRE_SHAPES: tuple[type, ...] = (
    Task,
    TaskDetail,
    TaskAccepted,
    Model,
    ModelList,
    Kernel,
    WhoAmI,
    RunRequest,
    InitEvent,
    GpuUpdateEvent,
    TaskUpdateEvent,
    TaskOutputLine,
    TaskOutputBatch,
    GapEvent,
)

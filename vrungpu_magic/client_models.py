"""The client's model-registry and inference calls, mixed into ``VrunGPUClient``."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vrungpu_magic.archive import zip_project
from vrungpu_magic.urls import seg

if TYPE_CHECKING:
    from collections.abc import Callable

PathLike = str | os.PathLike[str]
INFERENCE_WAIT_S = 300.0  # the gateway's default inference timeout


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _error(detail: str, code: str) -> Exception:
    from vrungpu_magic.client import VrunGPUError  # the client module imports this one

    return VrunGPUError(0, detail, code)


class ModelsClientMixin:
    """Register, list, download and delete models; run inference on them."""

    if TYPE_CHECKING:
        timeout: float

        def _request(self, method: str, path: str, **kwargs: Any) -> Any: ...

        def _stream_download(self, path: str, dest: PathLike) -> Path: ...

        def _upload(
            self,
            path: Path,
            fields: dict[str, Any],
            *,
            file_field: str = "file",
            route: str = "/run/project",
            on_progress: Callable[[int, int], None] | None = None,
        ) -> Any: ...

    def register_model(
        self,
        name: str,
        path: PathLike | None = None,
        *,
        task_id: str | None = None,
        model_type: str | None = None,
        framework: str | None = None,
        metrics: dict[str, Any] | None = None,
        description: str | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Register a model; returns it (``model_id``, ``version``, ``sha256``, ...).

        With ``task_id``: ``path`` is a file or folder in that task's workspace on the host
        (None: its newest model file); nothing is uploaded, and a ``handler.py`` with the
        ``*.py``/``*.json`` files beside the file are copied too. Without: ``path`` is a local
        file (streamed up) or folder (zipped on the fly and unpacked on the host).
        """
        meta = _drop_none(
            {
                "model_type": model_type,
                "framework": framework,
                "metrics": metrics,
                "description": description,
            }
        )
        if task_id is not None:
            body = _drop_none({"name": name, "task_id": task_id, "path": path and str(path)})
            return self._request("POST", "/model/register", json={**body, **meta})
        if path is None:
            raise ValueError("give the local path of a model file or folder, or a task_id")
        local = Path(path)
        fields = {"name": name, **meta}
        if local.is_file():
            return self._upload(
                local,
                fields,
                file_field="model_file",
                route="/model/register",
                on_progress=on_progress,
            )
        with tempfile.TemporaryDirectory(prefix="vrungpu-") as tmp:
            archive = zip_project(local, Path(tmp) / f"{local.resolve().name}.zip")
            return self._upload(
                archive,
                {**fields, "unpack": True},
                file_field="model_file",
                route="/model/register",
                on_progress=on_progress,
            )

    def list_models(
        self, name: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Registered models, newest first (``name``/``status`` filter)."""
        params = _drop_none({"name": name, "status": status, "limit": limit})
        return self._request("GET", "/models", params=params)["models"]

    def get_model(self, model_id: str) -> dict[str, Any]:
        return self._request("GET", f"/model/{seg(model_id)}")

    def update_model(
        self,
        model_id: str,
        *,
        status: str | None = None,
        description: str | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Archive (``status="archived"``) or restore a model, or change its description."""
        body = _drop_none({"status": status, "description": description, "metrics": metrics})
        return self._request("PATCH", f"/model/{seg(model_id)}", json=body)

    def delete_model(self, model_id: str) -> dict[str, Any]:
        """Unload the model's warm workers, then delete it and its files on the host."""
        return self._request("DELETE", f"/model/{seg(model_id)}")

    def download_model(self, model_id: str, dest: PathLike = ".", *, verify: bool = True) -> Path:
        """Download the artifact (a folder model as a zip) to ``dest`` (file or folder);
        with ``verify`` the file's sha256 must match the registry's."""
        expected = self.get_model(model_id)["sha256"] if verify else None
        path = self._stream_download(f"/model/{seg(model_id)}/download", dest)
        if expected is not None and _sha256(path) != expected:
            raise _error(
                f"downloaded {path.name} does not match sha256 {expected}", "checksum_mismatch"
            )
        return path

    def predict(
        self,
        model_id: str,
        input_data: Any,
        *,
        timeout: float | None = None,
        gpu_id: int | None = None,
        device: str | None = None,
        wait: bool = True,
    ) -> Any:
        """Run the model on ``input_data`` (any JSON) and return its result.

        ``wait=False`` returns the inference task's id at once instead. A failed inference
        raises ``VrunGPUError`` with the handler's message.
        """
        body = _drop_none(
            {
                "input_data": input_data,
                "timeout": timeout,
                "gpu_id": gpu_id,
                "device": device,
                "sync": wait,
            }
        )
        route = f"/model/{seg(model_id)}/inference"
        if not wait:
            return self._request("POST", route, json=body)["task_id"]
        http_timeout = max(self.timeout, (timeout or INFERENCE_WAIT_S) + 60)
        task = self._request("POST", route, json=body, timeout=http_timeout)
        if task["status"] != "completed":
            raise _error(
                f"inference {task['task_id']} {task['status']}: {task.get('error')}",
                "inference_failed",
            )
        return task["result"]

    def model_workers(self) -> dict[str, Any]:
        """The warm model workers on the host (pid, model, GPU, requests served)."""
        return self._request("GET", "/models/workers")

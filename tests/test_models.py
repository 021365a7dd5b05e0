"""The model registry against a real gateway: versions, sha256, lineage, save_model, files,
and every kind of bad input."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

from tests.model_helpers import register_bytes, register_plain
from tests.support import Api, GatewayProcess

SEED_FIELDS = {"model_id", "name", "model_type", "framework", "status", "file_size", "created_at"}

WRITE_ARTIFACTS = """
import json, os
open("model.pt", "wb").write(b"weights" * 100)
open("handler.py", "w").write("def load(d): return 1\\ndef predict(m, x): return x\\n")
open("net.py", "w").write("class Net: pass\\n")
open("config.json", "w").write(json.dumps({"hidden": 8}))
open("data.csv", "w").write("a,b\\n1,2\\n")
os.makedirs("export/sub", exist_ok=True)
open("export/model.onnx", "wb").write(b"onnx" * 10)
open("export/sub/vocab.txt", "w").write("hello")
os.symlink("/etc/passwd", "export/leak")
os.mkfifo("export/pipe")
os.mkfifo("pipe.pt")
"""


def _model_dir(gateway: GatewayProcess, model_id: str) -> Path:
    return gateway.data_dir / "models" / model_id


def test_upload_seed_form_versions_sha256_download_and_filters(
    gateway: GatewayProcess, api: Api
) -> None:
    content = b"\x00state" * 5000
    first = register_bytes(
        api,
        "mnist-classifier-v1",
        "model.pt",
        content,
        model_type="classifier",
        framework="pytorch",
    )
    assert set(first) >= SEED_FIELDS and first["status"] == "ready" and first["version"] == 1
    assert first["file_size"] == len(content) and first["framework"] == "pytorch"
    assert first["sha256"] == hashlib.sha256(content).hexdigest() and first["task_id"] is None
    assert (_model_dir(gateway, first["model_id"]) / "model.pt").read_bytes() == content
    second = register_bytes(api, "mnist-classifier-v1", "model.onnx", b"onnx")
    other = register_bytes(
        api, "other", "model.safetensors", b"st", metrics=json.dumps({"accuracy": 0.97})
    )
    assert (second["version"], other["version"]) == (2, 1)
    assert second["framework"] == "onnx" and other["metrics"] == {"accuracy": 0.97}

    download = api.get(f"/model/{first['model_id']}/download")
    assert download.status_code == 200 and download.content == content
    assert download.headers["X-Content-SHA256"] == first["sha256"]
    assert 'filename="model.pt"' in download.headers["Content-Disposition"]
    assert api.get(f"/model/{first['model_id']}").json()["sha256"] == first["sha256"]

    listing = api.get("/models").json()
    assert listing["total"] == 3 and listing["models"][0]["model_id"] == other["model_id"]
    named = api.get("/models", params={"name": "mnist-classifier-v1"}).json()["models"]
    assert [m["version"] for m in named] == [2, 1]
    assert api.get("/models", params={"status": "archived"}).json()["total"] == 0
    assert api.get("/").json()["total_models"] == 3
    assert api.get("/stats").json()["models"] == {"by_status": {"ready": 3}, "total": 3}


def test_uploaded_names_are_stored_by_basename(gateway: GatewayProcess, api: Api) -> None:
    files = [
        ("model_file", ("../../../escape.pt", b"w")),
        ("files", ("/etc/cron.d/handler.py", b"def load(d): pass\ndef predict(m, x): pass\n")),
        ("files", ("..\\..\\model.py", b"# model code")),
    ]
    res = api.post("/model/register", files=files, data={"name": "safe"})
    assert res.status_code == 201, res.text
    model = res.json()
    assert model["file_name"] == "escape.pt" and model["handler"] == "handler.py"
    assert model["files"] == ["escape.pt", "handler.py", "model.py"]
    folder = _model_dir(gateway, model["model_id"])
    assert sorted(p.name for p in folder.iterdir()) == model["files"]
    assert not list(gateway.data_dir.rglob("escape.pt"))[1:]  # only the stored copy
    assert not (gateway.data_dir.parent / "escape.pt").exists()
    twice = [("model_file", ("a/m.pt", b"1")), ("files", ("b/m.pt", b"2"))]
    res = api.post("/model/register", files=twice, data={"name": "dup"})
    assert res.status_code == 400 and "two uploaded files" in res.json()["detail"]
    assert not [p for p in (gateway.data_dir / "models").iterdir() if p.name.startswith(".")]


def test_register_from_task_copies_artifact_companions_and_folders(
    gateway: GatewayProcess, api: Api
) -> None:
    task = api.post("/run/sync", json={"code": WRITE_ARTIFACTS}).json()
    assert task["status"] == "completed", task
    res = api.post(
        "/model/register",
        json={
            "name": "from-task",
            "task_id": task["task_id"],
            "path": "model.pt",
            "metrics": {"loss": 0.1},
        },
    )
    assert res.status_code == 201, res.text
    model = res.json()
    assert model["task_id"] == task["task_id"] and model["metrics"] == {"loss": 0.1}
    assert model["files"] == ["config.json", "handler.py", "main.py", "model.pt", "net.py"]
    assert model["handler"] == "handler.py" and model["kind"] == "file"
    assert model["sha256"] == hashlib.sha256(b"weights" * 100).hexdigest()

    newest = api.post("/model/register", json={"name": "auto", "task_id": task["task_id"]})
    assert newest.json()["file_name"] == "model.pt"  # the newest model file at the root

    folder = api.post(
        "/model/register", json={"name": "folder", "task_id": task["task_id"], "path": "export"}
    ).json()
    assert folder["kind"] == "folder" and folder["file_name"] == "export"
    assert folder["files"] == ["model.onnx", "sub/vocab.txt"]  # the symlink stayed behind
    archive = api.get(f"/model/{folder['model_id']}/download")
    assert hashlib.sha256(archive.content).hexdigest() == folder["sha256"]
    assert len(archive.content) == folder["file_size"]
    names = zipfile.ZipFile(io.BytesIO(archive.content)).namelist()
    assert names == ["export/model.onnx", "export/sub/vocab.txt"]
    one = api.get(f"/model/{folder['model_id']}/download", params={"file": "sub/vocab.txt"})
    assert one.content == b"hello"
    for bad, status in (("../x", 400), ("/etc/passwd", 400), ("leak", 404)):
        res = api.get(f"/model/{folder['model_id']}/download", params={"file": bad})
        assert res.status_code == status, (bad, res.text)


def test_register_from_task_bad_input(api: Api) -> None:
    task_id = api.post("/run/sync", json={"code": WRITE_ARTIFACTS}).json()["task_id"]
    cases = [
        ({"name": "x", "task_id": task_id, "path": "../../vrungpu.db"}, 400),
        ({"name": "x", "task_id": task_id, "path": "/etc/passwd"}, 400),
        ({"name": "x", "task_id": task_id, "path": "export/leak"}, 400),
        ({"name": "x", "task_id": task_id, "path": "nothing.pt"}, 404),
        ({"name": "x", "task_id": task_id, "path": "pipe.pt"}, 400),
        ({"name": "x", "task_id": "no-such-task", "path": "model.pt"}, 404),
        ({"task_id": task_id, "path": "model.pt"}, 400),
        ({"name": "x"}, 400),
        ({"name": 5, "task_id": task_id}, 400),
        ({"name": "x", "task_id": task_id, "metrics": [1, 2]}, 400),
    ]
    for body, status in cases:
        res = api.post("/model/register", json=body)
        assert res.status_code == status, (body, res.text)
        assert set(res.json()) == {"detail", "code"} and "\n" not in res.json()["detail"]
    assert (
        api.post(
            "/model/register", data=b"{nope", headers={"Content-Type": "application/json"}
        ).status_code
        == 400
    )
    no_file = api.post("/model/register", files={"other": ("x.txt", b"1")}, data={"name": "x"})
    assert no_file.status_code == 400 and no_file.json()["code"] == "missing_file"
    no_name = api.post("/model/register", files={"model_file": ("m.pt", b"1")})
    assert no_name.status_code == 400 and no_name.json()["code"] == "missing_name"
    running = api.submit("import time; time.sleep(30)", name="busy")
    res = api.post("/model/register", json={"name": "x", "task_id": running})
    assert res.status_code == 409 and res.json()["code"] == "task_not_finished"
    api.post(f"/task/{running}/cancel")
    assert api.get("/models").json()["total"] == 0


def test_unknown_model_and_bad_queries(api: Api) -> None:
    for method, path in (
        ("GET", "/model/nope"),
        ("DELETE", "/model/nope"),
        ("GET", "/model/nope/download"),
        ("PATCH", "/model/nope"),
    ):
        res = api.request(method, path, json={"status": "archived"})
        assert res.status_code == 404 and res.json()["code"] == "model_not_found", path
    res = api.post("/model/nope/inference", json={"input_data": {}})
    assert res.status_code == 404
    for params in ({"status": "weird"}, {"limit": 0}, {"offset": -1}):
        assert api.get("/models", params=params).status_code == 400
    assert api.get("/model/register").status_code == 405


def test_save_model_registers_the_jobs_artifact(gateway: GatewayProcess, api: Api) -> None:
    code = (
        "import json\nopen('model.pt','wb').write(b'trained')\n"
        "json.dump({'accuracy': 0.93}, open('metrics.json','w'))\nprint('done')"
    )
    runs = [
        api.post(
            "/run/sync", json={"code": code, "save_model": True, "model_name": "auto-saved"}
        ).json()
        for _ in range(2)
    ]
    assert all(t["status"] == "completed" and t["model_id"] for t in runs), runs
    models = [api.get(f"/model/{t['model_id']}").json() for t in runs]
    assert [m["version"] for m in models] == [1, 2]
    assert all(m["task_id"] == t["task_id"] for m, t in zip(models, runs, strict=True))
    assert models[0]["metrics"] == {"accuracy": 0.93} and models[0]["file_name"] == "model.pt"
    assert models[0]["sha256"] == hashlib.sha256(b"trained").hexdigest()

    empty = api.post(
        "/run/sync", json={"code": "print(1)", "save_model": True, "model_name": "nothing"}
    ).json()
    assert empty["status"] == "failed" and "save_model" in empty["error"]
    assert empty["model_id"] is None
    res = api.post("/run/async", json={"code": "print(1)", "save_model": True})
    assert res.status_code == 400
    assert api.get("/models", params={"name": "nothing"}).json()["total"] == 0


def test_unpacked_folder_upload(gateway: GatewayProcess, api: Api) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("tok/handler.py", "def load(d): return 0\ndef predict(m, x): return x\n")
        archive.writestr("tok/vocab/words.txt", "a b c")
    files = {"model_file": ("tok.zip", buffer.getvalue())}
    res = api.post("/model/register", files=files, data={"name": "tok", "unpack": "true"})
    assert res.status_code == 201, res.text
    model = res.json()
    assert (model["kind"], model["file_name"]) == ("folder", "tok")
    assert model["files"] == ["handler.py", "vocab/words.txt"] and model["handler"] == "handler.py"
    bad = io.BytesIO()
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("../evil.py", "x")
    res = api.post(
        "/model/register",
        files={"model_file": ("e.zip", bad.getvalue())},
        data={"name": "evil", "unpack": "yes"},
    )
    assert res.status_code == 400 and res.json()["code"] == "unsafe_path"
    res = api.post(
        "/model/register",
        files={"model_file": ("e.zip", b"not a zip")},
        data={"name": "evil", "unpack": "1"},
    )
    assert res.status_code == 400 and res.json()["code"] == "bad_archive"
    assert not (gateway.data_dir / "evil.py").exists()


def test_archive_restore_and_delete(gateway: GatewayProcess, api: Api) -> None:
    model = register_plain(api)
    model_id = model["model_id"]
    archived = api.request(
        "PATCH", f"/model/{model_id}", json={"status": "archived", "description": "old"}
    )
    assert archived.status_code == 200 and archived.json()["status"] == "archived"
    assert archived.json()["description"] == "old"
    res = api.post(f"/model/{model_id}/inference", json={"input_data": {"x": [1]}})
    assert res.status_code == 409 and res.json()["code"] == "model_not_ready"
    assert api.get("/models", params={"status": "archived"}).json()["total"] == 1
    for body in ({}, {"status": "gone"}, {"metrics": "x"}):
        assert api.request("PATCH", f"/model/{model_id}", json=body).status_code == 400, body
    assert (
        api.request("PATCH", f"/model/{model_id}", json={"status": "ready"}).json()["status"]
        == "ready"
    )

    folder = _model_dir(gateway, model_id)
    assert folder.is_dir()
    res = api.delete(f"/model/{model_id}")
    assert res.status_code == 200 and res.json()["deleted"] is True
    assert not folder.exists() and api.get(f"/model/{model_id}").status_code == 404
    assert api.get("/models").json()["total"] == 0


def test_spec_lists_the_model_routes(api: Api) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    assert {
        "/models",
        "/models/workers",
        "/model/register",
        "/model/{model_id}",
        "/model/{model_id}/download",
        "/model/{model_id}/inference",
    } <= set(paths)
    assert set(paths["/model/{model_id}"]) == {"get", "patch", "delete"}


def test_client_registers_predicts_downloads_and_deletes(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    from tests.model_helpers import PLAIN_HANDLER
    from vrungpu_magic.client import VrunGPUClient, VrunGPUError

    client = VrunGPUClient(gateway.url, gateway.token)
    folder = tmp_path / "scaler"
    folder.mkdir()
    (folder / "handler.py").write_text(PLAIN_HANDLER)
    (folder / "weights.txt").write_text("5")
    model = client.register_model("scaler", folder, model_type="regressor")
    assert (model["kind"], model["file_name"], model["version"]) == ("folder", "scaler", 1)
    assert client.predict(model["model_id"], {"x": [1, 2]})["y"] == [5.0, 10.0]
    try:
        client.predict(model["model_id"], {"fail": "nope"})
        raise AssertionError("a failing handler must raise")
    except VrunGPUError as exc:
        assert exc.code == "inference_failed" and "bad input: nope" in exc.detail
    task_id = client.predict(model["model_id"], {"x": [3]}, wait=False)
    assert client.wait_for_task(task_id, timeout=60, poll_interval=0.1)["result"]["y"] == [15.0]
    assert client.model_workers()["worker_starts"] == 1

    single = tmp_path / "w.bin"
    single.write_bytes(b"\x01" * 1000)
    other = client.register_model("scaler", single, metrics={"mse": 0.5})
    assert other["version"] == 2 and other["metrics"] == {"mse": 0.5}
    trained = client.run_sync("open('model.pt','wb').write(b'abc')")
    lineage = client.register_model("from-task", "model.pt", task_id=trained["task_id"])
    assert lineage["task_id"] == trained["task_id"]
    assert [m["version"] for m in client.list_models(name="scaler")] == [2, 1]

    saved = client.download_model(other["model_id"], tmp_path)
    assert saved.read_bytes() == single.read_bytes() and saved.name == "w.bin"
    archive = client.download_model(model["model_id"], tmp_path / "scaler.zip")
    assert zipfile.ZipFile(archive).namelist() == ["scaler/handler.py", "scaler/weights.txt"]
    archived = client.update_model(model["model_id"], status="archived")
    assert archived["status"] == "archived" and archived["warm"] is False
    assert client.delete_model(model["model_id"])["deleted"] is True
    try:
        client.get_model(model["model_id"])
        raise AssertionError("a deleted model must be gone")
    except VrunGPUError as exc:
        assert exc.status == 404

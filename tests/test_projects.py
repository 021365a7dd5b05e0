"""`POST /run/project`: zip and .py uploads, streamed to disk, and their bad inputs."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import pytest
import requests

from tests.support import Api, GatewayProcess


def make_zip(files: dict[str, str | bytes], *, symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return buf.getvalue()


PROJECT = {
    "my_project/train.py": "from model import build\nimport json\n"
    "cfg = json.load(open('config.json'))\nprint(build(), cfg['lr'])\n"
    "print('[PROGRESS:100:done]')\nopen('model.pt','w').write('w')",
    "my_project/model.py": "def build():\n    return 'model-ok'\n",
    "my_project/config.json": '{"lr": 0.01}',
    "my_project/data/train.csv": "a,b\n1,2\n",
}


def upload(api: Api, data: bytes, filename: str = "p.zip", **fields: str) -> requests.Response:
    return api.post("/run/project", files={"file": (filename, data)}, data=fields)


def test_zip_with_a_top_folder_runs_its_entry_point(api: Api) -> None:
    res = upload(api, make_zip(PROJECT), entry_point="train.py", timeout="60")
    assert res.status_code == 202, res.text
    body = res.json()
    assert body["status"] == "pending" and body["entry_point"] == "train.py"
    task = api.wait_status(body["task_id"], "completed")
    assert task["stdout"].splitlines()[0] == "model-ok 0.01"
    files = {f["path"] for f in api.get(f"/task/{body['task_id']}/files").json()["files"]}
    assert {"train.py", "model.py", "config.json", "data/train.csv", "model.pt"} <= files


def test_flat_zip_and_form_fields(api: Api) -> None:
    flat = {k.split("/", 1)[1]: v for k, v in PROJECT.items()}
    res = upload(
        api,
        make_zip(flat),
        entry_point="train.py",
        gpu_id="1",
        name="flat",
        priority="3",
        args='["--x", "1"]',
    )
    task = api.wait_status(res.json()["task_id"], "completed")
    assert task["gpu_ids"] == [1] and task["name"] == "flat" and task["priority"] == 3
    assert task["args"] == ["--x", "1"]


def test_single_py_upload(api: Api) -> None:
    res = upload(api, b"import sys\nprint('script', sys.argv[1:])", "hello.py", args="a b")
    task = api.wait_status(res.json()["task_id"], "completed")
    assert task["entry_point"] == "hello.py" and task["stdout"] == "script ['a', 'b']\n"


@pytest.mark.parametrize(
    ("data", "filename", "fields", "code", "detail"),
    [
        (
            make_zip(PROJECT),
            "p.zip",
            {"entry_point": "main.py"},
            "entry_point_missing",
            "model.py, my_project/train.py",
        ),
        (b"PK\x03\x04 this is not a zip", "p.zip", {}, "bad_archive", "zip"),
        (b"hello", "notes.txt", {}, "bad_upload", ".zip"),
        (
            make_zip({"../evil.py": "x"}),
            "p.zip",
            {"entry_point": "../evil.py"},
            "unsafe_path",
            "escapes",
        ),
        (make_zip({"/abs.py": "x"}), "p.zip", {"entry_point": "abs.py"}, "unsafe_path", ""),
        (make_zip({"main.py": "x"}, symlink="link"), "p.zip", {}, "unsafe_path", "symlink"),
        (make_zip({"main.py": "x"}), "p.zip", {"entry_point": "../../x.py"}, "unsafe_path", ""),
        (make_zip({"main.py": "x"}), "p.zip", {"timeout": "-1"}, "invalid_request", "timeout"),
        (make_zip({"main.py": "x"}), "p.zip", {"gpu_id": "9"}, "unsatisfiable", "gpu_id 9"),
    ],
)
def test_bad_uploads_write_nothing(
    api: Api,
    gateway: GatewayProcess,
    data: bytes,
    filename: str,
    fields: dict[str, str],
    code: str,
    detail: str,
) -> None:
    res = upload(api, data, filename, **fields)
    assert res.status_code == 400, res.text
    err = res.json()
    assert err["code"] == code and detail in err["detail"] and "\n" not in err["detail"]
    assert list((gateway.data_dir / "workspaces").iterdir()) == []
    assert list((gateway.data_dir / "uploads").iterdir()) == []
    assert api.get("/tasks").json() == []


def test_upload_without_file_or_multipart(api: Api) -> None:
    res = api.post("/run/project", data={"entry_point": "x.py"}, files={"other": ("", b"")})
    assert res.status_code == 400
    res = api.post("/run/project", json={"file": "x"})
    assert res.status_code == 400 and res.json()["code"] == "bad_upload"


def test_too_large_upload_is_413(start_gateway, tmp_path: Path) -> None:
    api = start_gateway(extra=["--max-upload-mb", "1"]).api
    res = upload(api, make_zip({"main.py": "x" * 10, "big.bin": b"\1" * (3 * 2**19)}))
    assert res.status_code == 413 and res.json()["code"] == "too_large"
    assert list((tmp_path / "data0" / "uploads").iterdir()) == []
    assert upload(api, make_zip({"main.py": "print(1)"})).status_code == 202

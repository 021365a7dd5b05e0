"""Task queries, logs, files and every kind of bad input, against a real gateway."""

from __future__ import annotations

import pytest

from tests.support import Api, GatewayProcess


def test_list_filters_pages_and_leaves_out_output(api: Api) -> None:
    ok = [
        api.post("/run/sync", json={"code": f"print({i})", "name": f"t{i}"}).json()
        for i in range(3)
    ]
    bad = api.post("/run/sync", json={"code": "raise SystemExit(3)", "device": "cpu"}).json()
    res = api.get("/tasks")
    listing = res.json()  # the seed's bare list; the total and pages in headers
    assert res.headers["X-Total-Count"] == "4" and listing[0]["task_id"] == bad["task_id"]
    assert all("stdout" not in t and "stderr" not in t for t in listing)
    assert api.get("/tasks", params={"status": "failed"}).headers["X-Total-Count"] == "1"
    assert api.get("/tasks", params={"device": "cpu"}).json()[0]["return_code"] == 3
    page = api.get("/tasks", params={"limit": 2, "offset": 1})
    assert [t["name"] for t in page.json()] == ["t2", "t1"]
    assert page.headers["X-Total-Count"] == "4"
    assert page.links["next"]["url"].endswith("limit=2&offset=3")
    assert page.links["prev"]["url"].endswith("limit=2&offset=0")
    assert {t["task_id"] for t in ok} <= {t["task_id"] for t in listing}
    assert page.links["next"]["url"].startswith("/tasks?")  # relative: no Host echoed back
    with_token = api.get("/tasks", params={"limit": 1, "offset": 1, "token": "secret"})
    assert "secret" not in with_token.headers["Link"]
    bad = ({"status": "weird"}, {"limit": 0}, {"limit": "x"}, {"offset": -1}, {"offset": 2**63})
    for params in bad:
        res = api.get("/tasks", params=params)
        assert res.status_code == 400, params


def test_logs_by_stream_offset_and_tail(api: Api) -> None:
    code = (
        "import sys\nfor i in range(5): print(f'line {i}')\n"
        "sys.stderr.write('oops\\n')\nsys.stdout.buffer.write(b'bin \\xff\\xfe end\\n')"
    )
    task_id = api.post("/run/sync", json={"code": code}).json()["task_id"]
    out = api.get(f"/task/{task_id}/logs", params={"stream": "stdout"}).json()
    assert out["content"].startswith("line 0\nline 1") and out["offset"] == 0
    assert out["next_offset"] == out["size"] and "bin \ufffd\ufffd end" in out["content"]
    later = api.get(f"/task/{task_id}/logs", params={"stream": "stdout", "offset": 7}).json()
    assert later["content"].startswith("line 1\n") and later["offset"] == 7
    tail = api.get(f"/task/{task_id}/logs", params={"stream": "stdout", "tail": 2}).json()
    assert tail["content"] == "line 4\nbin \ufffd\ufffd end\n"
    both = api.get(f"/task/{task_id}/logs").json()
    assert both["streams"]["stderr"]["content"] == "oops\n" and "line 3" in both["content"]
    assert api.get(f"/task/{task_id}/logs", params={"stream": "x"}).status_code == 400
    assert api.get(f"/task/{task_id}/logs", params={"offset": 3}).status_code == 400
    assert api.get("/task/nope/logs").status_code == 404


def test_files_list_and_download(api: Api) -> None:
    code = (
        "import os\nos.makedirs('out', exist_ok=True)\n"
        "open('out/model.pt','wb').write(b'\\x00weights' * 1000)\n"
        "os.symlink('/etc/passwd', 'leak')"
    )
    task_id = api.post("/run/sync", json={"code": code}).json()["task_id"]
    files = api.get(f"/task/{task_id}/files").json()["files"]
    assert {f["path"] for f in files} == {"main.py", "out/model.pt"}
    data = api.get(f"/task/{task_id}/files/out/model.pt")
    assert data.status_code == 200 and data.content == b"\x00weights" * 1000
    for bad in ("../../vrungpu.db", "leak", "%2Fetc%2Fpasswd"):
        res = api.get(f"/task/{task_id}/files/{bad}")
        assert res.status_code in (400, 404), bad
        assert "root:" not in res.text
    assert api.get(f"/task/{task_id}/files/missing.pt").status_code == 404


BAD_RUN_REQUESTS = [
    ("{not json", "bad_json"),
    ("[1, 2]", "bad_json"),
    ({"name": "x"}, "missing_code"),
    ({"code": 5}, "invalid_request"),
    ({"code": "1", "timeout": -5}, "invalid_request"),
    ({"code": "1", "timeout": 0}, "invalid_request"),
    ({"code": "1", "timeout": "soon"}, "invalid_request"),
    ({"code": "1", "gpu_id": 7}, "unsatisfiable"),
    ({"code": "1", "gpu_id": "0"}, "invalid_request"),
    ({"code": "1", "gpus": 3}, "unsatisfiable"),
    ({"code": "1", "gpus": 0}, "invalid_request"),
    ({"code": "1", "device": "tpu"}, "invalid_request"),
    ({"code": "1", "args": "notalist"}, "invalid_request"),
    ({"code": "1", "env": {"A": 1}}, "invalid_request"),
    ({"code": "1", "env": {"BAD NAME": "x"}}, "invalid_request"),
    ({"code": "1", "env": {"NAME\n": "x"}}, "invalid_request"),
    ({"code": "1", "priority": 1.5}, "invalid_request"),
    ({"code": "1", "save_model": True}, "invalid_request"),
]


@pytest.mark.parametrize(("body", "code"), BAD_RUN_REQUESTS)
def test_bad_run_requests_are_4xx_with_one_line(
    api: Api, gateway: GatewayProcess, body: object, code: str
) -> None:
    kwargs = {"data": body} if isinstance(body, str) else {"json": body}
    for route in ("/run/async", "/run/sync"):
        res = api.post(route, **kwargs)
        assert res.status_code == 400, (route, res.text)
        err = res.json()
        assert err["code"] == code and "\n" not in err["detail"] and err["detail"]
    assert list((gateway.data_dir / "workspaces").iterdir()) == []
    assert api.get("/tasks").json() == []


def test_unknown_task_ids_are_404(api: Api) -> None:
    for method, path in (
        ("GET", "/task/nope"),
        ("DELETE", "/task/nope"),
        ("POST", "/task/nope/cancel"),
        ("GET", "/task/nope/files"),
    ):
        res = api.request(method, path)
        assert res.status_code == 404 and res.json()["code"] == "task_not_found"
    res = api.put("/task/nope/progress", json={"progress": 5})
    assert res.status_code == 404

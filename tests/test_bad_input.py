"""Bad input against a real gateway: every attack answers a 4xx with one line, never a 500:
deep nesting, out-of-range numbers, invalid Unicode, NUL characters, bad query arguments and
bad headers. And nothing of it reaches a task."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests

from tests.support import TOKEN, GatewayProcess

JSON = {"Authorization": f"token {TOKEN}", "Content-Type": "application/json"}
JSON_ROUTES = [
    ("POST", "/run/async"),
    ("POST", "/run/sync"),
    ("POST", "/api/kernels"),
    ("POST", "/model/register"),
    ("PATCH", "/model/m1"),
    ("POST", "/model/m1/inference"),
    ("PUT", "/task/t1/progress"),
]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(tmp_path_factory.mktemp("bad-input")).start()
    yield gateway
    assert "Traceback" not in gateway.log()  # no 500 hid behind a 4xx either
    gateway.stop()


def send(gw: GatewayProcess, method: str, path: str, body: str | bytes) -> requests.Response:
    return requests.request(method, gw.url + path, data=body, headers=JSON, timeout=30)


def bad_json(res: requests.Response) -> str:
    assert res.status_code == 400, res.text
    body = res.json()
    assert body["code"] == "bad_json" and "\n" not in body["detail"], body
    return str(body["detail"])


def task_count(gw: GatewayProcess) -> int:
    return int(gw.api.get("/tasks").headers["X-Total-Count"])


@pytest.mark.parametrize(("method", "path"), JSON_ROUTES)
def test_deep_nesting_is_400_on_every_json_route(
    gw: GatewayProcess, method: str, path: str
) -> None:
    for levels in (100_000, 64):
        body = '{"code": "pass", "x": ' + "[" * levels + "]" * levels + "}"
        assert "deeper than 64" in bad_json(send(gw, method, path, body))
    ok = '{"code": "pass", "device": "cpu", "x": ' + "[" * 63 + "]" * 63 + "}"
    assert send(gw, "POST", "/run/async", ok).status_code == 202  # 64 levels with the body


@pytest.mark.parametrize(
    "value",
    ["1e999999", "-1E+400", "NaN", "Infinity", "-Infinity", "9223372036854775808", "9" * 5000],
)
def test_numbers_out_of_range_are_400(gw: GatewayProcess, value: str) -> None:
    before = task_count(gw)
    bad_json(send(gw, "POST", "/run/async", '{"code": "pass", "x": ' + value + "}"))
    bad_json(send(gw, "POST", "/run/async", '{"code": "pass", "x": {"y": [1, ' + value + "]}}"))
    bad_json(send(gw, "PATCH", "/model/m1", '{"metrics": {"a": ' + value + "}}"))
    assert task_count(gw) == before


@pytest.mark.parametrize(
    "body",
    [
        '{"code": "\\ud800"}',
        '{"code": "pass", "env": {"A": "\\udfff"}}',
        '{"code": "pass", "args": ["\\ud83d"]}',
        '{"code": "pass", "session": "\\ud800"}',
        '{"code": "pass", "\\udc00": 1}',
        '{"name": "\\ud800", "task_id": "t1"}',
        '{"session": "\\ud800"}',
        '{"description": "x\\ud800"}',
        '{"input_data": "\\ud800"}',
    ],
)
def test_lone_surrogates_are_400(gw: GatewayProcess, body: str) -> None:
    before = task_count(gw)
    for method, path in JSON_ROUTES:
        assert "surrogate" in bad_json(send(gw, method, path, body))
    assert task_count(gw) == before


def test_invalid_utf8_is_400(gw: GatewayProcess) -> None:
    for raw in (b'{"code": "\xff"}', b'{"code": "\xed\xa0\x80"}', '{"code": "é"}'.encode("utf-16")):
        bad_json(send(gw, "POST", "/run/async", raw))


@pytest.mark.parametrize(
    "body",
    [
        '{"code": "pass\\u0000"}',
        '{"code": "pass", "env": {"A": "x\\u0000y"}}',
        '{"code": "pass", "args": ["a\\u0000"]}',
        '{"code": "pass", "session": "s\\u0000"}',
        '{"code": "pass", "name": "n\\u0000"}',
        '{"code": "pass", "requirements": ["six\\u0000"]}',
    ],
)
def test_nul_characters_are_400(gw: GatewayProcess, body: str) -> None:
    before = task_count(gw)
    assert "NUL" in bad_json(send(gw, "POST", "/run/async", body))
    assert task_count(gw) == before


def test_nul_is_data_inside_input_data_and_escaped_text_is_no_nul(gw: GatewayProcess) -> None:
    res = send(gw, "POST", "/model/m1/inference", '{"input_data": {"text": "a\\u0000b"}}')
    assert res.status_code == 404 and res.json()["code"] == "model_not_found", res.text
    task_id = gw.api.submit("print('ok')", device="cpu", args=["\\u0000"], env={"A": "\\ud800"})
    assert gw.api.wait_status(task_id, "completed")["status"] == "completed"


@pytest.mark.parametrize(
    "query",
    [
        "/tasks?status=%ff",
        "/tasks?session=%ff%fe",
        "/tasks?status=%00",
        "/tasks?limit=%00",
        "/tasks?limit=99999999999999999999999999",
        "/tasks?offset=1e999",
        "/models?name=%ff",
        "/models?status=%00",
        "/api/kernels?session=%00",
        "/task/%00",
        "/task/%ff/logs",
        "/model/%00/download?file=%00",
    ],
)
def test_bad_query_and_path_arguments_are_4xx(gw: GatewayProcess, query: str) -> None:
    res = gw.api.get(query)
    assert res.status_code < 500, res.text
    if res.status_code >= 400:
        assert "\n" not in res.json()["detail"], res.text


def raw_request(gw: GatewayProcess, head: bytes, body: bytes = b"") -> bytes:
    parts = urlsplit(gw.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(head + b"\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize(
    "header",
    [
        b"Content-Length: abc",
        b"Content-Length: -1",
        b"Content-Length: 15, 16",
        b"Content-Length: 1e3",
        b"Transfer-Encoding: chunked\r\nContent-Length: 15",
        b"Authorization: token \xff\xfe\x00",
        b"Authorization: \xff",
    ],
)
def test_bad_headers_are_400(gw: GatewayProcess, header: bytes) -> None:
    head = (
        b"POST /run/async HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\n" + header + b"\r\n"
    )
    answer = raw_request(gw, head, b'{"code":"pass"}')
    assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 401")), answer[:200]


def test_garbage_authorization_values_are_401(gw: GatewayProcess) -> None:
    for value in (
        "token",
        "Bearer ",
        "token " + "x" * 10000,
        "token tok\u00e9",
        "Basic Zm9vOmJhcg==",
    ):
        res = requests.get(gw.url + "/tasks", headers={"Authorization": value}, timeout=30)
        assert res.status_code == 401 and res.json()["code"] == "unauthorized", res.text
    res = requests.get(gw.url + "/tasks?token=%ff%00", timeout=30)
    assert res.status_code == 401


def test_model_register_answers_a_json_body_over_one_mb(gw: GatewayProcess) -> None:
    body = json.dumps({"name": "m", "task_id": "t1", "description": "d" * (2 * 2**20)})
    res = send(gw, "POST", "/model/register", body)  # was: the connection dropped
    assert res.status_code in (400, 404, 413), res.text
    assert res.json()["code"]


@pytest.mark.parametrize(
    "fields",
    [
        {"args": "[" * 5000 + "]" * 5000},
        {"args": '["a", 1e999]'},
        {"env": '{"A": "x\\u0000"}'},
        {"env": '{"A": "\\ud800"}'},
        {"requirements": '["six", {"a": ' + "[" * 100 + "]" * 100 + "}]"},
        {"session": "s\x00"},
        {"entry_point": "train\x00.py"},
    ],
)
def test_form_fields_of_an_upload_follow_the_same_rules(
    gw: GatewayProcess, fields: dict[str, str]
) -> None:
    before = task_count(gw)
    files = {"file": ("train.py", b"print(1)")}
    res = gw.api.post("/run/project", files=files, data={"entry_point": "train.py", **fields})
    assert res.status_code == 400 and "\n" not in res.json()["detail"], res.text
    assert task_count(gw) == before


def test_model_upload_metrics_follow_the_same_rules(gw: GatewayProcess) -> None:
    for metrics in ("[" * 5000 + "]" * 5000, '{"a": NaN}', '{"a": "\\ud800"}'):
        files = {"model_file": ("m.pt", b"x")}
        res = gw.api.post("/model/register", files=files, data={"name": "m", "metrics": metrics})
        assert res.status_code == 400 and "\n" not in res.json()["detail"], res.text

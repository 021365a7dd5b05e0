"""Users and ownership (``--users-file``) against a real gateway: each user sees and acts on
their own tasks, models and kernels only; another user's id answers 404 like an unknown one;
the admin (the main token) sees all."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import websocket

from tests.model_helpers import register_plain
from tests.support import REPO, TOKEN, Api, GatewayProcess, wait_for

ALICE = "alice-token-0123456789"
BOB = "bob-token-0123456789"
CAROL = "carol-token-0123456789"


def write_users(path: Path, users: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"users": users}))
    return path


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    return write_users(
        tmp_path / "users.json",
        [
            {"name": "alice", "token": ALICE},
            {"name": "bob", "token_sha256": hashlib.sha256(BOB.encode()).hexdigest()},
        ],
    )


@pytest.fixture
def gw(start_gateway: Callable[..., GatewayProcess], users_file: Path) -> GatewayProcess:
    return start_gateway(extra=["--users-file", str(users_file)])


def as_user(gw: GatewayProcess, token: str) -> Api:
    return Api(gw.url, token)


def not_found_like_unknown(api: Api, method: str, path: str, real_id: str, **kw: Any) -> None:
    """``path`` with ``real_id`` answers exactly as it does with an id that does not exist."""
    real = api.request(method, path.format(id=real_id), **kw)
    fake_id = "f" * len(real_id)
    unknown = api.request(method, path.format(id=fake_id), **kw)
    assert real.status_code == unknown.status_code == 404, (real.text, unknown.text)
    assert real.json()["code"] == unknown.json()["code"]
    assert real.json()["detail"] == unknown.json()["detail"].replace(fake_id, real_id)


# -- identity -----------------------------------------------------------------------------------
def test_whoami_names_the_user_of_each_token(gw: GatewayProcess) -> None:
    assert as_user(gw, ALICE).get("/whoami").json() == {"name": "alice", "admin": False}
    assert as_user(gw, BOB).get("/whoami").json() == {"name": "bob", "admin": False}
    assert gw.api.get("/whoami").json() == {"name": "admin", "admin": True}
    res = as_user(gw, "nobody-token-0123").get("/whoami")
    assert res.status_code == 401 and res.json()["code"] == "unauthorized"
    probe = Api(gw.url, None).get(f"/dashboard/session?token={ALICE}").json()
    assert probe == {"auth_required": True, "authenticated": True}


def test_no_auth_is_the_local_admin(start_gateway: Callable[..., GatewayProcess]) -> None:
    gw = start_gateway(token=None)
    assert Api(gw.url, None).get("/whoami").json() == {"name": "admin", "admin": True}


def refused_start(data_dir: Path, *flags: str) -> list[str]:
    """Start a gateway that must refuse to start (exit 2); the lines it wrote to stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "vrungpu_gateway", "--port", "0", "--gpus", "sim:1"]
        + ["--data-dir", str(data_dir), *flags],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 2, proc.stderr
    return proc.stderr.strip().splitlines()


def test_a_users_file_with_no_auth_is_refused(tmp_path: Path, users_file: Path) -> None:
    lines = refused_start(tmp_path / "data", "--no-auth", "--users-file", str(users_file))
    assert lines == [
        "vrungpu-gateway: --users-file needs tokens: with --no-auth everyone is the admin"
    ]


def test_user_tokens_are_masked_in_the_log(gw: GatewayProcess) -> None:
    as_user(gw, ALICE).get(f"/nowhere?token={ALICE}")
    res = as_user(gw, ALICE).get(f"/task/{ALICE}")  # a token where no token= says so
    assert res.status_code == 404
    gw.stop()
    assert ALICE not in gw.log()
    assert "GET /task/***" in gw.log()  # the line was written, masked


@pytest.mark.parametrize(
    ("users", "message"),
    [
        ([{"name": "bad name", "token": "t" * 10}], "name must be"),
        ([{"name": "a", "token": "t" * 10}, {"name": "a", "token": "u" * 10}], "taken"),
        ([{"name": "a", "token": "t" * 10}, {"name": "b", "token": "t" * 10}], "token"),
        ([{"name": "a"}], "exactly one of token"),
        ([{"name": "a", "token_sha256": "xyz"}], "64 hex"),
        ([{"name": "admin", "token": "t" * 10}], "taken"),
    ],
)
def test_a_bad_users_file_stops_the_start_with_one_line(
    tmp_path: Path, users: list[dict[str, Any]], message: str
) -> None:
    path = write_users(tmp_path / "users.json", users)
    lines = refused_start(tmp_path / "data", "--token", TOKEN, "--users-file", str(path))
    assert len(lines) == 1 and message in lines[0] and "users-file" in lines[0], lines
    assert not (tmp_path / "data").exists()  # refused before anything was written


# -- tasks --------------------------------------------------------------------------------------
def test_tasks_are_their_owners_own(gw: GatewayProcess) -> None:
    alice, bob, admin = as_user(gw, ALICE), as_user(gw, BOB), gw.api
    mine = alice.submit("open('out.txt', 'w').write('hi'); print('alice says hi')")
    alice.wait_status(mine, "completed")
    theirs = bob.submit("print('bob')")
    bob.wait_status(theirs, "completed")
    assert alice.task(mine)["owner"] == "alice"

    for method, path in [
        ("GET", "/task/{id}"),
        ("GET", "/task/{id}/logs"),
        ("GET", "/task/{id}/files"),
        ("GET", "/task/{id}/files/out.txt"),
        ("POST", "/task/{id}/cancel"),
        ("DELETE", "/task/{id}"),
    ]:
        not_found_like_unknown(bob, method, path, mine)
    assert bob.put(f"/task/{mine}/progress", json={"progress": 5}).status_code == 404

    assert [t["task_id"] for t in alice.get("/tasks").json()] == [mine]
    assert alice.get("/tasks").headers["X-Total-Count"] == "1"
    assert [t["task_id"] for t in bob.get("/tasks").json()] == [theirs]
    assert {t["task_id"] for t in admin.get("/tasks").json()} == {mine, theirs}
    assert admin.get(f"/task/{mine}/files/out.txt").content == b"hi"
    assert "alice says hi" in alice.get(f"/task/{mine}/logs").json()["content"]
    assert alice.get("/stats").json()["tasks"]["by_status"]["completed"] == 2  # global counts

    assert alice.delete(f"/task/{mine}").status_code == 200
    assert admin.delete(f"/task/{theirs}").status_code == 200
    assert admin.get("/tasks").json() == []


def test_a_user_cannot_cancel_another_users_running_task(gw: GatewayProcess) -> None:
    alice, bob = as_user(gw, ALICE), as_user(gw, BOB)
    task_id = alice.submit("import time; time.sleep(60)")
    alice.wait_status(task_id, "running")
    assert bob.post(f"/task/{task_id}/cancel").status_code == 404
    assert alice.task(task_id)["status"] == "running"
    assert alice.post(f"/task/{task_id}/cancel").json()["status"] == "cancelled"


# -- WebSocket ----------------------------------------------------------------------------------
class Ws:
    def __init__(self, gw: GatewayProcess, token: str) -> None:
        url = gw.url.replace("http://", "ws://") + f"/ws?token={token}"
        self.conn = websocket.create_connection(url, timeout=30, suppress_origin=True)

    def send(self, **message: Any) -> None:
        self.conn.send(json.dumps(message))

    def until(self, predicate: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        while True:
            seen.append(json.loads(self.conn.recv()))
            if predicate(seen[-1]):
                return seen


def test_the_firehose_and_subscriptions_keep_to_the_owner(gw: GatewayProcess) -> None:
    alice, bob = as_user(gw, ALICE), as_user(gw, BOB)
    old = bob.submit("print('bob-old')")
    bob.wait_status(old, "completed")
    ws = Ws(gw, ALICE)
    try:
        init = ws.until(lambda m: m["type"] == "init")[-1]
        assert init["tasks"] == []
        ws.send(type="subscribe", task_id=old)
        error = ws.until(lambda m: m["type"] == "error")[-1]
        assert error["code"] == "task_not_found" and error["task_id"] == old
        bobs = bob.submit("print('bob-secret')")
        bob.wait_status(bobs, "completed")
        alices = alice.submit("print('alice-line')")
        seen = ws.until(
            lambda m: (
                m["type"] == "task_update"
                and m["task"]["task_id"] == alices
                and m["task"]["status"] == "completed"
            )
        )
        assert any(m.get("line") == "alice-line" for m in seen)
        assert bobs not in json.dumps(seen) and "bob-secret" not in json.dumps(seen)
        bob.delete(f"/task/{bobs}")
        alice.delete(f"/task/{alices}")
        deleted = ws.until(lambda m: m["type"] == "task_deleted")
        assert deleted[-1] == {"type": "task_deleted", "task_id": alices}  # the seed shape
        assert bobs not in json.dumps(deleted)
    finally:
        ws.conn.close()


def test_the_admin_firehose_sees_every_user(gw: GatewayProcess) -> None:
    ws = Ws(gw, TOKEN)
    try:
        ws.until(lambda m: m["type"] == "init")
        bobs = as_user(gw, BOB).submit("print('bob-line')")
        seen = ws.until(lambda m: m.get("line") == "bob-line")
        assert seen[-1]["task_id"] == bobs
    finally:
        ws.conn.close()


# -- reload -------------------------------------------------------------------------------------
def test_sighup_rereads_the_users_file(gw: GatewayProcess, users_file: Path) -> None:
    carol = as_user(gw, CAROL)
    assert carol.get("/whoami").status_code == 401
    users = json.loads(users_file.read_text())["users"]
    write_users(users_file, [*users, {"name": "carol", "token": CAROL, "admin": True}])
    assert gw.proc is not None
    os.kill(gw.proc.pid, signal.SIGHUP)
    wait_for(lambda: carol.get("/whoami").status_code == 200, what="carol let in")
    assert carol.get("/whoami").json() == {"name": "carol", "admin": True}

    users_file.write_text("{not json")
    os.kill(gw.proc.pid, signal.SIGHUP)
    wait_for(lambda: "users file not reloaded" in gw.log(), what="the reload refused")
    assert carol.get("/whoami").status_code == 200  # the old users stay
    assert as_user(gw, ALICE).get("/whoami").status_code == 200


def test_a_removed_user_is_let_go(gw: GatewayProcess, users_file: Path) -> None:
    """After a reload without alice, her token is refused and her open WebSockets end;
    bob's stays open."""
    alice_ws, bob_ws = Ws(gw, ALICE), Ws(gw, BOB)
    try:
        alice_ws.until(lambda m: m["type"] == "init")
        bob_ws.until(lambda m: m["type"] == "init")
        write_users(users_file, [{"name": "bob", "token": BOB}])
        assert gw.proc is not None
        os.kill(gw.proc.pid, signal.SIGHUP)
        wait_for(lambda: as_user(gw, ALICE).get("/whoami").status_code == 401, what="alice out")
        alice_ws.conn.settimeout(30)
        with pytest.raises(websocket.WebSocketConnectionClosedException):
            while True:
                alice_ws.conn.recv()
        assert alice_ws.conn.status == 1008 or not alice_ws.conn.connected
        bob_ws.send(type="subscribe", task_id="nope")
        assert bob_ws.until(lambda m: m["type"] == "error")[-1]["code"] == "task_not_found"
    finally:
        alice_ws.conn.close()
        bob_ws.conn.close()


# -- models -------------------------------------------------------------------------------------
def test_models_are_their_owners_own(gw: GatewayProcess) -> None:
    alice, bob, admin = as_user(gw, ALICE), as_user(gw, BOB), gw.api
    mine = register_plain(alice, "resnet")
    theirs = register_plain(bob, "resnet", scale=3.0)
    assert mine["owner"] == "alice" and theirs["owner"] == "bob"
    model_id = mine["model_id"]

    for method, path in [
        ("GET", "/model/{id}"),
        ("GET", "/model/{id}/download"),
        ("DELETE", "/model/{id}"),
    ]:
        not_found_like_unknown(bob, method, path, model_id)
    not_found_like_unknown(bob, "PATCH", "/model/{id}", model_id, json={"status": "archived"})
    res = bob.post(f"/model/{model_id}/inference", json={"input_data": {"x": [1]}})
    assert res.status_code == 404 and res.json()["code"] == "model_not_found"

    assert [m["model_id"] for m in alice.get("/models").json()["models"]] == [model_id]
    assert [m["model_id"] for m in bob.get("/models?name=resnet").json()["models"]] == [
        theirs["model_id"]
    ]
    assert admin.get("/models").json()["total"] == 2

    res = alice.post(f"/model/{model_id}/inference", json={"input_data": {"x": [1]}, "sync": True})
    assert res.status_code == 200 and res.json()["result"] == {"y": [2.0], "pid": ANY_PID}
    assert res.json()["owner"] == "alice"
    assert bob.get(f"/task/{res.json()['task_id']}").status_code == 404
    workers = alice.get("/models/workers").json()["workers"]
    assert [(w["model_id"], w["owner"]) for w in workers] == [(model_id, "alice")]
    held = [d["holder"] for d in bob.get("/gpu").json()["devices"] if d["holder"]]
    assert [(h["kind"], h["owner"]) for h in held] == [("worker", "alice")]  # the warm worker

    # a task's files become a model only for whoever may read the task
    task_id = alice.submit("open('model.pt', 'wb').write(b'w')")
    alice.wait_status(task_id, "completed")
    res = bob.post("/model/register", json={"name": "stolen", "task_id": task_id})
    assert res.status_code == 404 and res.json()["code"] == "task_not_found"
    assert alice.post("/model/register", json={"name": "m", "task_id": task_id}).status_code == 201

    assert bob.delete(f"/model/{theirs['model_id']}").status_code == 200
    assert alice.get(f"/model/{model_id}").status_code == 200


class _AnyPid:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, int)


ANY_PID = _AnyPid()


# -- kernels and sessions -----------------------------------------------------------------------
def channels_url(gw: GatewayProcess, kernel_id: str, token: str) -> str:
    return gw.url.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels?token={token}"


def test_kernels_and_sessions_are_their_owners_own(gw: GatewayProcess) -> None:
    alice, bob, admin = as_user(gw, ALICE), as_user(gw, BOB), gw.api
    res = alice.post("/api/kernels", json={"name": "vrungpu-cpu", "session": "analysis"})
    assert res.status_code == 201, res.text
    kernel = res.json()
    assert kernel["owner"] == "alice"
    kernel_id = kernel["id"]

    for method, path in [
        ("GET", "/api/kernels/{id}"),
        ("DELETE", "/api/kernels/{id}"),
        ("POST", "/api/kernels/{id}/interrupt"),
        ("POST", "/api/kernels/{id}/restart"),
    ]:
        not_found_like_unknown(bob, method, path, kernel_id)
    with pytest.raises(websocket.WebSocketBadStatusException) as err:
        websocket.create_connection(channels_url(gw, kernel_id, BOB), suppress_origin=True)
    assert err.value.status_code == 404
    conn = websocket.create_connection(channels_url(gw, kernel_id, ALICE), suppress_origin=True)
    conn.close()

    # session names are per user: bob's "analysis" is a kernel of his own
    again = alice.post("/api/kernels", json={"name": "vrungpu-cpu", "session": "analysis"})
    assert again.status_code == 200 and again.json()["id"] == kernel_id
    res = bob.post("/api/kernels", json={"name": "vrungpu-cpu", "session": "analysis"})
    assert res.status_code == 201 and res.json()["id"] != kernel_id
    bobs = res.json()["id"]
    assert [k["id"] for k in alice.get("/api/kernels?session=analysis").json()] == [kernel_id]
    assert [k["id"] for k in bob.get("/api/kernels").json()] == [bobs]
    assert {k["id"] for k in admin.get("/api/kernels").json()} == {kernel_id, bobs}

    assert admin.delete(f"/api/kernels/{bobs}").status_code == 204
    assert alice.delete(f"/api/kernels/{kernel_id}").status_code == 204


# -- GPU holders ---------------------------------------------------------------------------------
def test_gpu_holders_name_their_owner(gw: GatewayProcess) -> None:
    alice, bob = as_user(gw, ALICE), as_user(gw, BOB)
    task_id = alice.submit("import time; time.sleep(60)", gpus=1)
    alice.wait_status(task_id, "running")
    kernel = bob.post("/api/kernels", json={"name": "vrungpu-1gpu"}).json()
    devices = bob.get("/gpu").json()["devices"]
    holders = {g["holder"]["id"]: g["holder"] for g in devices if g["holder"]}
    assert holders[task_id]["owner"] == "alice" and holders[task_id]["kind"] == "task"
    assert holders[kernel["id"]]["owner"] == "bob" and holders[kernel["id"]]["kind"] == "kernel"
    bob.delete(f"/api/kernels/{kernel['id']}")
    alice.post(f"/task/{task_id}/cancel")


# -- the JupyterLab proxy: whose token ---------------------------------------------------------
def test_the_proxy_uses_each_jupyter_users_own_token(tmp_path: Path) -> None:
    serverext = pytest.importorskip("vrungpu_magic.serverext")
    base = serverext.Connection(url="http://gw", token="owner-token")
    pick = serverext.connection_for
    # a plain single-user server: its one user is its owner
    assert pick("anyone", base=base, user_tokens={}, owner=None).token == "owner-token"
    # JupyterHub: the owner gets the configured token; a user the owner shares with does not
    assert pick("alice", base=base, user_tokens={}, owner="alice").token == "owner-token"
    with pytest.raises(serverext.NoTokenForUser, match="'bob'"):
        pick("bob", base=base, user_tokens={}, owner="alice")
    # a shared server: each user named in the tokens file gets their own, others nothing
    tokens = {"bob": BOB}
    assert pick("bob", base=base, user_tokens=tokens, owner="alice").token == BOB
    assert pick("bob", base=base, user_tokens=tokens, owner=None).token == BOB
    with pytest.raises(serverext.NoTokenForUser):
        pick("carol", base=base, user_tokens=tokens, owner=None)

    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(tokens))
    path.chmod(0o644)
    with pytest.raises(ValueError, match="readable by others"):
        serverext.read_user_tokens(str(path))
    path.chmod(0o600)
    assert serverext.read_user_tokens(str(path)) == tokens
    path.write_text('["bob"]')
    with pytest.raises(ValueError, match="expected"):
        serverext.read_user_tokens(str(path))


def test_the_proxy_refuses_a_jupyter_user_who_does_not_own_the_server(
    gw: GatewayProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real `jupyter server` configured with alice's token for the JupyterHub user alice:
    a request from another Jupyter user (here the token login's anonymous user) gets no
    gateway access through alice's token, over REST, the dashboard link and the WebSocket."""
    pytest.importorskip("jupyter_server")
    from tests.browser.conftest import start_jupyter, stop_jupyter

    monkeypatch.setenv("JUPYTERHUB_USER", "alice")
    jp = start_jupyter(tmp_path / "jupyter", gw.url, ALICE, app="server")
    try:
        for path in ("vrungpu/api/whoami", "vrungpu/dashboard"):
            res = jp.get(path, headers=jp.auth)
            assert res.status_code == 403, (path, res.text)
            assert res.json()["code"] == "no_gateway_token" and "alice" in res.json()["detail"]
            assert ALICE not in res.text
        ws_url = jp.url.replace("http", "ws", 1) + "vrungpu/ws"
        header = [f"Authorization: {jp.auth['Authorization']}"]
        with pytest.raises(websocket.WebSocketBadStatusException) as err:
            websocket.create_connection(ws_url, header=header, suppress_origin=True)
        assert err.value.status_code == 403
    finally:
        stop_jupyter(jp)


# -- the user book, in process ------------------------------------------------------------------
def test_user_book_resolves_tokens_and_keeps_its_users_on_a_bad_reload(users_file: Path) -> None:
    from vrungpu_gateway.engine.users import ADMIN, User, UserBook

    book = UserBook(main_token=TOKEN, users_file=users_file)
    assert book.resolve(TOKEN) == ADMIN
    assert book.resolve(ALICE) == User("alice") and book.resolve(BOB) == User("bob")
    assert book.resolve(None) is None and book.resolve("") is None
    assert book.resolve(ALICE + "x") is None and book.resolve("\udcff") is None
    assert book.names == ["admin", "alice", "bob"]
    assert UserBook(main_token=None, users_file=None).resolve(None) == ADMIN  # --no-auth

    users_file.write_text(json.dumps({"users": [{"name": "eve", "token": TOKEN}]}))
    assert book.reload() is False  # a user with the main token is refused
    users_file.write_text('{"users": {}}')
    assert book.reload() is False
    assert book.resolve(ALICE) == User("alice")
    write_users(users_file, [{"name": "alice", "token": ALICE, "admin": True}])
    assert book.reload() is True
    assert book.resolve(ALICE) == User("alice", admin=True) and book.resolve(BOB) is None


def test_owners_and_scopes() -> None:
    from vrungpu_gateway.engine.users import ADMIN, User

    alice = User("alice")
    assert alice.owns("alice") and not alice.owns("bob") and not alice.owns(None)
    assert ADMIN.owns(None) and ADMIN.owns("bob")  # rows from before users are the admin's
    assert alice.scope == "alice" and ADMIN.scope is None

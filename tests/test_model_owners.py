"""Model names and versions are per owner: alice's first "resnet" is v1 whatever bob or the
admin registered (another user's versions would tell that they exist); the admin lists every
user's; models from before users are the admin's and its versions go on from theirs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.model_helpers import register_plain
from tests.support import Api, GatewayProcess
from tests.test_migrations import v050_database
from tests.test_users import ALICE, BOB, write_users

SAVE = "open('model.pt', 'wb').write(b'w')"


def start(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path, **kw: object
) -> tuple[GatewayProcess, Api, Api]:
    users = write_users(
        tmp_path / "users.json",
        [{"name": "alice", "token": ALICE}, {"name": "bob", "token": BOB}],
    )
    gw = start_gateway(extra=["--users-file", str(users)], **kw)
    return gw, Api(gw.url, ALICE), Api(gw.url, BOB)


def versions(api: Api, name: str) -> list[tuple[str, int]]:
    listed = api.get("/models", params={"name": name}).json()["models"]
    return sorted((m["owner"], m["version"]) for m in listed)


def test_each_owner_counts_its_own_versions(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    gw, alice, bob = start(start_gateway, tmp_path)
    admin = gw.api
    assert register_plain(admin, "resnet")["version"] == 1
    first = register_plain(alice, "resnet")
    theirs = register_plain(bob, "resnet")
    second = register_plain(alice, "resnet")
    assert (first["version"], theirs["version"], second["version"]) == (1, 1, 2)
    assert (first["owner"], theirs["owner"]) == ("alice", "bob")
    assert register_plain(admin, "resnet")["version"] == 2

    assert versions(alice, "resnet") == [("alice", 1), ("alice", 2)]
    assert versions(bob, "resnet") == [("bob", 1)]
    assert bob.get(f"/model/{second['model_id']}").status_code == 404
    assert versions(admin, "resnet") == [
        ("admin", 1), ("admin", 2), ("alice", 1), ("alice", 2), ("bob", 1)
    ]  # fmt: skip

    # a run's save_model and a register-from-task version among their owner's models too
    run = bob.post("/run/sync", json={"code": SAVE, "save_model": True, "model_name": "resnet"})
    assert run.json()["status"] == "completed", run.text
    saved = bob.get(f"/model/{run.json()['model_id']}").json()
    assert (saved["owner"], saved["version"]) == ("bob", 2)
    task_id = alice.submit(SAVE)
    alice.wait_status(task_id, "completed")
    res = alice.post("/model/register", json={"name": "resnet", "task_id": task_id})
    assert res.status_code == 201, res.text
    assert (res.json()["owner"], res.json()["version"]) == ("alice", 3)


def test_models_from_before_users_are_the_admins(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    v050_database(data / "vrungpu.db")  # "digits" v1 and v2, no owner
    gw, alice, _ = start(start_gateway, tmp_path, data_dir=data)
    assert versions(gw.api, "digits") == [("admin", 1), ("admin", 2)]
    assert register_plain(gw.api, "digits")["version"] == 3
    assert register_plain(alice, "digits")["version"] == 1
    assert versions(alice, "digits") == [("alice", 1)]

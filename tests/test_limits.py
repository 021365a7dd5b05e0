"""Limits (issue 11 point 3): every one answers 413 (or 400) before disk or memory grows.

Most tests share one gateway with small limits; the zip bomb and the 200 MB body meet the
default ones.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support import Api, Gate, GatewayProcess, wait_for
from vrungpu_gateway.engine.archive import (
    RATIO_FLOOR_BYTES,
    Unpacker,
    ZipLimits,
    checked_members,
    open_zip,
)
from vrungpu_gateway.engine.limits import RequestLimits
from vrungpu_gateway.engine.progress import clip_message
from vrungpu_gateway.errors import TooLarge

SMALL = [
    "--max-body-mb",
    "1",
    "--max-upload-mb",
    "1",
    "--max-code-kb",
    "1",
    "--max-env-vars",
    "2",
    "--max-env-kb",
    "1",
    "--max-args",
    "2",
    "--max-args-kb",
    "1",
    "--max-progress-chars",
    "50",
    "--max-zip-members",
    "50",
]
MB = 2**20


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path_factory.mktemp("limits"), extra=SMALL).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def default(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path_factory.mktemp("defaults")).start()
    yield gw
    gw.stop()


def peak_rss_kb(gw: GatewayProcess) -> int:
    assert gw.proc is not None
    for line in Path(f"/proc/{gw.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def refused(res: requests.Response, code: str, status: int = 413) -> str:
    assert res.status_code == status, res.text
    body = res.json()
    assert body["code"] == code and "\n" not in body["detail"], body
    return str(body["detail"])


def left_in(gw: GatewayProcess, folder: str) -> list[Path]:
    return list((gw.data_dir / folder).iterdir())


def chunks(total: int, piece: bytes) -> Iterator[bytes]:
    """``total`` bytes in pieces of one reused buffer (the test holds none of it)."""
    sent = 0
    while sent < total:
        yield piece
        sent += len(piece)


# -- zips -------------------------------------------------------------------------------------
def bomb(members: int, member_bytes: int) -> bytes:
    """A real zip of ``members`` files of zeros, ``member_bytes`` each, the zeros compressed
    once and the stream reused (deflate packs zeros ~1000:1): quick to build, valid to unpack."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    block, crc, data = bytes(MB), 0, b""
    for _ in range(member_bytes // MB):
        data += packer.compress(block)
        crc = zlib.crc32(block, crc)
    data += packer.flush()
    out, central = io.BytesIO(), io.BytesIO()
    for i in range(members):
        name = f"p/f{i}.bin".encode()
        fields = (0, 8, 0, 33, crc, len(data), member_bytes, len(name), 0)
        central.write(
            struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, *fields, 0, 0, 0, 0, out.tell())
        )
        central.write(name)
        out.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, *fields) + name + data)
    start, size = out.tell(), central.tell()
    out.write(central.getvalue())
    out.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, members, members, size, start, 0))
    return out.getvalue()


def make_zip(files: dict[str, bytes | str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buf.getvalue()


def upload(api: Api, data: bytes, **fields: str) -> requests.Response:
    return api.post("/run/project", files={"file": ("p.zip", data)}, data=fields)


def test_a_zip_bomb_with_default_flags_is_refused_with_nothing_written(
    default: GatewayProcess,
) -> None:
    data = bomb(96, 64 * MB)  # 6 MB that unpacks to 6 GiB
    assert len(data) < 7 * MB
    detail = refused(upload(default.api, data, entry_point="f0.bin"), "archive_too_large")
    assert "--max-zip-ratio" in detail
    assert left_in(default, "workspaces") == [] and left_in(default, "uploads") == []
    assert default.api.get("/tasks").json() == []
    res = default.api.post(
        "/model/register", files={"model_file": ("m.zip", data)}, data={"name": "m", "unpack": "1"}
    )
    refused(res, "archive_too_large")
    assert left_in(default, "models") == [] and left_in(default, "uploads") == []


def test_a_200_mb_json_body_is_refused_without_being_held(default: GatewayProcess) -> None:
    before = peak_rss_kb(default)
    piece = b" " * MB  # JSON whitespace: a valid start, never a complete body
    res = default.api.post(
        "/run/async",
        data=chunks(200 * MB, piece),
        headers={"Content-Type": "application/json"},
    )
    assert "16 MB" in refused(res, "body_too_large")
    assert peak_rss_kb(default) - before < 50 * 1024
    # a declared length over the limit is refused before a byte of the body is read
    res = default.api.post(
        "/run/async", data=piece * 17, headers={"Content-Type": "application/json"}
    )
    refused(res, "body_too_large")
    assert peak_rss_kb(default) - before < 50 * 1024
    assert default.api.get("/health").status_code == 200


def test_json_bodies_over_the_limit(small: GatewayProcess) -> None:
    api = small.api
    big = json.dumps({"code": "print(1)", "name": "x" * (2 * MB)})
    refused(api.post("/run/async", data=big), "body_too_large")
    refused(api.post("/run/async", data=chunks(2 * MB, b" " * 65536)), "body_too_large")
    res = api.post("/model/register", data=big, headers={"Content-Type": "application/json"})
    refused(res, "body_too_large")
    res = api.post(
        "/model/register",
        data=chunks(2 * MB, b" " * 65536),
        headers={"Content-Type": "application/json"},
    )
    refused(res, "body_too_large")
    # exactly at the limit is taken, declared or chunked; one byte more is not
    at_limit = json.dumps({"code": "print(1)", "name": "n"}).encode()
    at_limit += b" " * (MB - len(at_limit))
    assert api.post("/run/async", data=at_limit).status_code == 202
    assert api.post("/run/async", data=iter([at_limit[:1000], at_limit[1000:]])).status_code == 202
    refused(api.post("/run/async", data=at_limit + b" "), "body_too_large")
    refused(api.post("/run/async", data=iter([at_limit, b" "])), "body_too_large")
    for task in api.get("/tasks").json():
        api.wait_status(task["task_id"], "completed")
        api.delete(f"/task/{task['task_id']}")


def test_a_chunked_upload_over_the_cap_is_413(small: GatewayProcess) -> None:
    boundary = "limitsboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="p.zip"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    ).encode()

    def body() -> Iterator[bytes]:
        yield head
        yield from chunks(3 * MB, b"\0" * 65536)

    for path, field in (("/run/project", "file"), ("/model/register", "model_file")):
        res = small.api.post(
            path,
            data=body()
            if field == "file"
            else (c.replace(b'"file"', b'"model_file"') for c in body()),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert "1 MB" in refused(res, "too_large")
        assert left_in(small, "uploads") == []


def test_code_env_and_args_over_their_limits(small: GatewayProcess) -> None:
    api = small.api
    tasks, workspaces = api.get("/tasks").json(), left_in(small, "workspaces")
    cases = [
        ({"code": "#" * 2000}, "code_too_large", "--max-code-kb"),
        ({"env": {"A": "1", "B": "2", "C": "3"}}, "env_too_large", "--max-env-vars"),
        ({"env": {"A": "x" * 2000}}, "env_too_large", "--max-env-kb"),
        ({"args": ["1", "2", "3"]}, "args_too_large", "--max-args"),
        ({"args": ["x" * 2000]}, "args_too_large", "--max-args-kb"),
    ]
    for fields, code, flag in cases:
        assert flag in refused(api.post("/run/async", json={"code": "print(1)", **fields}), code)
    res = upload(api, make_zip({"main.py": "print(1)"}), args=json.dumps(["1", "2", "3"]))
    refused(res, "args_too_large")
    res = upload(api, make_zip({"main.py": "print(1)"}), env=json.dumps({"A": "x" * 2000}))
    refused(res, "env_too_large")
    assert api.get("/tasks").json() == tasks and left_in(small, "workspaces") == workspaces
    res = api.post("/api/kernels", json={"env": {"A": "1", "B": "2", "C": "3"}})
    assert "--max-env-vars" in refused(res, "env_too_large")
    assert api.get("/api/kernels").json() == []
    ok = {"code": "#" * 1000, "env": {"A": "1", "B": "2"}, "args": ["1", "2"]}
    task_id = api.submit(**ok)
    api.wait_status(task_id, "completed")
    api.delete(f"/task/{task_id}")


def test_a_long_progress_message_is_cut(small: GatewayProcess, gate: Gate) -> None:
    api = small.api
    code = "print('[PROGRESS:40:' + 'x' * 20000 + ']', flush=True)\n" + gate.code
    task_id = api.submit(code)
    task = wait_for(lambda: (t := api.task(task_id))["progress_message"] and t, 30)
    assert len(task["progress_message"]) == 50 and task["progress_message"].endswith("…")
    assert task["progress"] == 40
    res = api.put(f"/task/{task_id}/progress", json={"progress": 60, "message": "y" * 500_000})
    assert res.status_code == 200, res.text
    assert res.json()["progress_message"] == "y" * 49 + "…"
    gate.open()
    task = api.wait_status(task_id, "completed")
    assert task["progress_message"] == "y" * 49 + "…"
    api.delete(f"/task/{task_id}")


def test_a_zip_with_too_many_members(small: GatewayProcess) -> None:
    files: dict[str, bytes | str] = {f"d/{i}.txt": "x" for i in range(50)}
    detail = refused(
        upload(small.api, make_zip({"main.py": "print(1)", **files})), "archive_too_large"
    )
    assert "51 members" in detail and "--max-zip-members" in detail
    assert left_in(small, "workspaces") == [] and left_in(small, "uploads") == []
    files.pop("d/0.txt")
    res = upload(small.api, make_zip({"main.py": "print(1)", **files}))
    assert res.status_code == 202, res.text
    small.api.wait_status(res.json()["task_id"], "completed")
    small.api.delete(f"/task/{res.json()['task_id']}")


# -- the one zip check, in process --------------------------------------------------------------
def test_the_total_size_limit_holds_before_and_while_unpacking(tmp_path: Path) -> None:
    path = tmp_path / "z.zip"
    path.write_bytes(bomb(3, 2 * MB))
    tight = ZipLimits(max_bytes=5 * MB, max_ratio=10**6, max_members=10)
    with open_zip(path, tight) as archive, pytest.raises(TooLarge, match="--max-unpack-mb"):
        checked_members(archive, tight)
    with open_zip(path, tight) as archive:  # a reader that skipped the check still stops
        unpacker = Unpacker(archive, tight)
        with pytest.raises(TooLarge, match="--max-unpack-mb"):
            for i, info in enumerate(archive.infolist()):
                unpacker.write(info, tmp_path / f"out{i}")
    assert unpacker.written <= 5 * MB + 2**20
    few = ZipLimits(max_members=2)
    with pytest.raises(TooLarge, match="3 members"):
        open_zip(path, few)  # from the end record, before the directory is read


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--max-body-mb", "0"), ("--max-zip-ratio", "nan"), ("--max-zip-members", "-1")],
)
def test_a_limit_that_cannot_be_met_stops_the_start(tmp_path: Path, flag: str, value: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vrungpu_gateway", "--data-dir", str(tmp_path), flag, value],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and flag in done.stderr


# -- the request limits and the progress cut, in process -------------------------------------------
def test_request_limits_name_the_flag_they_come_from() -> None:
    limits = RequestLimits(max_code_bytes=4, max_env_vars=1, max_env_bytes=4, max_args=1)
    limits.check_code("abcd")
    with pytest.raises(TooLarge, match="--max-code-kb"):
        limits.check_code("é" * 3)  # 6 bytes in UTF-8
    limits.check_env({"AB": "cd"})
    with pytest.raises(TooLarge, match="--max-env-vars"):
        limits.check_env({"A": "", "B": ""})
    with pytest.raises(TooLarge, match="--max-env-kb"):
        limits.check_env({"A": "bcde"})
    limits.check_args(["x" * 1000])
    with pytest.raises(TooLarge, match="--max-args"):
        limits.check_args(["a", "b"])
    with pytest.raises(TooLarge, match="--max-args-kb"):
        RequestLimits(max_args_bytes=3).check_args(["ab", "cd"])


def test_a_progress_message_is_cut_to_its_limit() -> None:
    assert clip_message(None, 5) is None
    assert clip_message("12345", 5) == "12345"
    assert clip_message("123456", 5) == "1234…"
    assert clip_message("123456", 1) == "…"


def test_a_zip_may_always_unpack_to_the_ratio_floor() -> None:
    limits = ZipLimits(max_bytes=100 * MB, max_ratio=10)
    assert limits.allowed_bytes(1000) == RATIO_FLOOR_BYTES
    assert limits.allowed_bytes(5 * MB) == 50 * MB
    assert limits.allowed_bytes(50 * MB) == 100 * MB


def test_form_fields_and_file_parts_of_an_upload_are_bounded(small: GatewayProcess) -> None:
    api = small.api
    fields = {f"f{i}": "x" * 60_000 for i in range(20)}  # each under 64 KB, 1.2 MB in all
    res = api.post("/run/project", files={"file": ("p.zip", b"PK")}, data=fields)
    assert "in all" in refused(res, "too_large")
    many = [("extra", (f"{i}.py", b"")) for i in range(101)]
    res = api.post(
        "/model/register", files=[("model_file", ("m.pt", b"w")), *many], data={"name": "m"}
    )
    assert "100 files" in refused(res, "too_large")
    assert left_in(small, "uploads") == []


def test_a_damaged_member_is_a_bad_archive_with_nothing_left(small: GatewayProcess) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("p/main.py", "print(1)\n" * 10)
    data = bytearray(buf.getvalue())
    data[30 + len("p/main.py")] ^= 0xFF  # the first byte of the member: its CRC no longer holds
    res = upload(small.api, bytes(data))
    assert "corrupt" in refused(res, "bad_archive", 400)
    res = small.api.post(
        "/model/register",
        files={"model_file": ("m.zip", bytes(data))},
        data={"name": "m", "unpack": "1"},
    )
    assert "corrupt" in refused(res, "bad_archive", 400)
    assert left_in(small, "uploads") == [] and left_in(small, "workspaces") == []
    assert left_in(small, "models") == []

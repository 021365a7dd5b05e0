"""Log files and `GET /task/{id}/logs`: one line-cutting rule live and on replay, byte offsets
shared with the WebSocket, non-UTF-8 output and `\\r` progress bars."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import websocket

from tests.support import TOKEN, Api, GatewayProcess, wait_for
from vrungpu_gateway.engine.logs import (
    MAX_LINE_BYTES,
    Line,
    OutputStream,
    line_text,
    log_path,
    read_lines,
    split_lines,
    tail_offset,
)


# -- the cutting rule ------------------------------------------------------------------------------
def test_split_lines_cuts_at_newlines_and_every_max_line_bytes() -> None:
    long = b"y" * (2 * MAX_LINE_BYTES + 5)
    data = b"a\n\nb" + b"\n" + b"x" * MAX_LINE_BYTES + b"\n" + long + b"\n" + b"tail"
    lines, consumed = split_lines(data)
    assert [raw for raw, _ in lines] == [
        b"a",
        b"",
        b"b",
        b"x" * MAX_LINE_BYTES,  # exactly the limit, then its newline: one line
        b"y" * MAX_LINE_BYTES,
        b"y" * MAX_LINE_BYTES,
        b"yyyyy",
    ]
    assert consumed == len(data) - len(b"tail") and lines[-1][1] == consumed
    assert split_lines(data, final=True)[0][-1] == (b"tail", len(data))
    assert split_lines(b"z" * MAX_LINE_BYTES) == ([], 0)  # may still get its newline


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"plain", "plain"),
        (b"crlf\r", "crlf"),
        (b" 10%|#   | 1/10\r 50%|##  | 5/10\r100%|####| 10/10", "100%|####| 10/10"),
        (b"done\r   \r", "done"),
        (b"bad \xff\xfe bytes", "bad \ufffd\ufffd bytes"),
        ("한글".encode(), "한글"),
    ],
)
def test_line_text(raw: bytes, text: str) -> None:
    assert line_text(raw) == text


def _feed_randomly(path: Path, data: bytes, seed: int) -> list[Line]:
    emitted: list[Line] = []
    out = OutputStream(path, "stdout", emitted.extend, lambda progress: None)
    rng = random.Random(seed)
    pos = 0
    while pos < len(data):
        size = rng.choice([1, 7, 100, 4096, 65536, 200_000])
        out.feed(data[pos : pos + size])
        pos += size
    out.close()
    return emitted


def _sample_output(seed: int) -> bytes:
    rng = random.Random(seed)
    parts = []
    for i in range(400):
        kind = rng.random()
        if kind < 0.05:
            parts.append(b"L" * rng.randint(MAX_LINE_BYTES - 2, 3 * MAX_LINE_BYTES) + b"\n")
        elif kind < 0.15:
            parts.append(b"".join(f"\r{p}%|".encode() for p in range(0, 101, 10)) + b"\n")
        elif kind < 0.2:
            parts.append(b"\xff\xfe\xe2\x82 broken " + "é€😀".encode() + b"\n")
        else:
            parts.append(f"line {i}\n".encode())
    parts.append(b"no newline at the end \xe2")
    return b"".join(parts)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_live_lines_equal_a_replay_from_any_of_their_offsets(tmp_path: Path, seed: int) -> None:
    data = _sample_output(seed)
    path = tmp_path / "t.stdout.log"
    emitted = _feed_randomly(path, data, seed)
    assert path.read_bytes() == data and emitted[-1].offset == len(data)
    replayed = _replay(data, 0)
    assert replayed == [(line.text, line.offset) for line in emitted]
    for line in random.Random(seed).sample(emitted, 20):  # resume anywhere: the exact rest
        rest = [(e.text, e.offset) for e in emitted if e.offset > line.offset]
        assert _replay(data, line.offset) == rest


def _replay(data: bytes, offset: int) -> list[tuple[str, int]]:
    lines, _ = split_lines(data[offset:], final=True)
    return [(line_text(raw), offset + end) for raw, end in lines]


# -- reading whole lines -----------------------------------------------------------------------
def test_read_lines_keeps_a_running_tasks_last_line_as_partial(tmp_path: Path) -> None:
    log_path(tmp_path, "t", "stderr").write_bytes(b"one\ntwo\n 40%|#\r 50%|##")
    running = read_lines(tmp_path, "t", "stderr", offset=0, limit_bytes=1 << 20, final=False)
    assert running.lines == ["one", "two"] and running.next_offset == 8
    assert running.partial == " 50%|##" and running.content == "one\ntwo\n"
    done = read_lines(tmp_path, "t", "stderr", offset=4, limit_bytes=1 << 20, final=True)
    assert done.lines == ["two", " 50%|##"] and done.next_offset == done.size == 22
    cut = read_lines(tmp_path, "t", "stderr", offset=0, limit_bytes=6, final=True)
    assert cut.lines == ["one"] and cut.next_offset == 4 and not cut.complete
    assert tail_offset(tmp_path, "t", "stderr", 1, final=False, max_bytes=1 << 20) == 4
    assert tail_offset(tmp_path, "t", "stderr", 1, final=True, max_bytes=1 << 20) == 8
    assert tail_offset(tmp_path, "t", "stderr", 9, final=True, max_bytes=1 << 20) == 0


# -- over HTTP -----------------------------------------------------------------------------------
def logs(api: Api, task_id: str, **params: object) -> dict[str, object]:
    res = api.get(f"/task/{task_id}/logs", params=params)
    assert res.status_code == 200, res.text
    return res.json()


def test_http_reads_non_utf8_and_progress_bars_like_the_websocket(
    api: Api, gateway: GatewayProcess
) -> None:
    code = (
        "import sys\n"
        "out = sys.stdout.buffer\n"
        "out.write(b'caf\\xc3\\xa9 \\xff\\xfe\\n')\n"
        "for p in range(0, 101, 25):\n"
        "    out.write(f'\\r{p}%|bar| {p}/100'.encode())\n"
        "out.write(b'\\nafter\\n')\n"
    )
    task_id = api.post("/run/sync", json={"code": code}).json()["task_id"]
    body = logs(api, task_id, stream="stdout")
    assert body["lines"] == ["café \ufffd\ufffd", "100%|bar| 100/100", "after"]
    assert body["content"].startswith("café \ufffd\ufffd\n\r0%|bar| 0/100\r25%")
    assert body["next_offset"] == body["size"] and body["partial"] == ""
    tail = logs(api, task_id, stream="stdout", tail=2)
    assert tail["lines"] == ["100%|bar| 100/100", "after"]  # a redrawn bar is one line
    assert api.task(task_id)["progress"] == 100
    ws = websocket.create_connection(
        gateway.url.replace("http", "ws") + f"/ws?token={TOKEN}", timeout=10
    )
    try:
        ws.send(json.dumps({"type": "subscribe", "task_id": task_id, "offset": tail["offset"]}))
        while (message := json.loads(ws.recv()))["type"] != "task_output":
            pass
        assert message["lines"] == tail["lines"] and message["offset"] == tail["next_offset"]
    finally:
        ws.close()


def test_http_on_a_running_task_stops_at_the_last_whole_line(api: Api) -> None:
    code = (
        "import sys, time\n"
        "print('first', flush=True)\n"
        "sys.stderr.write('setup\\n')\n"
        "for p in (10, 20, 30):\n"
        "    sys.stderr.write(f'\\r{p}%|bar|')\n"
        "    sys.stderr.flush()\n"
        "    time.sleep(0.2)\n"
        "time.sleep(30)\n"
    )
    task_id = api.submit(code)
    body = wait_for(
        lambda: (b := logs(api, task_id, stream="stderr", tail=5))["partial"] == "30%|bar|" and b,
        20,
    )
    assert body["lines"] == ["setup"] and body["next_offset"] == len("setup\n")
    assert body["size"] > body["next_offset"]
    both = logs(api, task_id, tail=1)
    assert both["streams"]["stdout"]["lines"] == ["first"] and "first" in both["content"]
    api.post(f"/task/{task_id}/cancel")


def test_resuming_from_next_offset_reads_each_line_once(api: Api) -> None:
    task_id = api.post(
        "/run/sync", json={"code": "for i in range(3000): print(i)\nprint('end', end='')"}
    ).json()["task_id"]
    seen: list[str] = []
    offset = 0
    for _ in range(5):
        body = logs(api, task_id, stream="stdout", offset=offset)
        seen += body["lines"]
        offset = body["next_offset"]
    assert seen == [str(i) for i in range(3000)] + ["end"]
    beyond = logs(api, task_id, stream="stdout", offset=10**9)
    assert beyond["lines"] == [] and beyond["offset"] == beyond["size"]


def test_bad_log_queries(api: Api) -> None:
    task_id = api.post("/run/sync", json={"code": "print(1)"}).json()["task_id"]
    for params in (
        {"stream": "x"},
        {"offset": 3},  # offset needs one stream
        {"stream": "stdout", "offset": 1, "tail": 1},
        {"stream": "stdout", "offset": -1},
        {"stream": "stdout", "tail": "many"},
    ):
        res = api.get(f"/task/{task_id}/logs", params=params)
        assert res.status_code == 400 and res.json()["code"] == "invalid_request", params

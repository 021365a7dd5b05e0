"""`WS /ws` against a real gateway with real WebSocket clients: shapes, subscriptions, gaps,
slow clients, and the one GPU timer."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket

from tests.support import TOKEN, Api, Gate, GatewayProcess, wait_for
from vrungpu_gateway.engine.streams import OUTBOX_BYTES

Message = dict[str, Any]


class Ws:
    """A blocking WebSocket client of the gateway (websocket-client)."""

    def __init__(self, gw: GatewayProcess, *, query: str | None = None, **options: Any) -> None:
        url = gw.url.replace("http://", "ws://") + "/ws"
        url += f"?{query}" if query is not None else f"?token={TOKEN}"
        options.setdefault("suppress_origin", True)
        self.conn = websocket.create_connection(url, timeout=30, **options)

    def send(self, **message: Any) -> None:
        self.conn.send(json.dumps(message))

    def recv(self, timeout_s: float = 30) -> Message:
        self.conn.settimeout(timeout_s)
        return json.loads(self.conn.recv())

    def until(self, predicate: Callable[[Message], bool], timeout_s: float = 30) -> list[Message]:
        """Messages up to and including the first that matches ``predicate``."""
        deadline = time.monotonic() + timeout_s
        seen: list[Message] = []
        while True:
            message = self.recv(max(0.1, deadline - time.monotonic()))
            seen.append(message)
            if predicate(message):
                return seen

    def close(self) -> None:
        self.conn.close(timeout=1)

    def abort(self) -> None:
        """Drop the connection without a closing handshake (the client stopped reading)."""
        self.conn.shutdown()


@pytest.fixture
def connect() -> Iterator[Callable[..., Ws]]:
    """Open WebSocket clients; all are closed after the test."""
    opened: list[Ws] = []

    def open_ws(gw: GatewayProcess, **kwargs: Any) -> Ws:
        opened.append(Ws(gw, **kwargs))
        return opened[-1]

    yield open_ws
    for ws in opened:
        ws.close()


def is_end(task_id: str) -> Callable[[Message], bool]:
    def check(m: Message) -> bool:
        return (
            m["type"] == "task_update"
            and m["task"]["task_id"] == task_id
            and m["task"]["status"] in ("completed", "failed", "cancelled")
        )

    return check


def batches(messages: list[Message], task_id: str, stream: str = "stdout") -> Iterator[Message]:
    for m in messages:  # "lines": not the firehose lines sent before the subscription
        if (
            m["type"] == "task_output"
            and "lines" in m
            and (m["task_id"], m["stream"])
            == (
                task_id,
                stream,
            )
        ):
            yield m


def subscribed_lines(messages: list[Message], task_id: str, stream: str = "stdout") -> list[str]:
    """The lines of every batch, checking each batch's offset only grows."""
    lines: list[str] = []
    last = -1
    for m in batches(messages, task_id, stream):
        assert m["offset"] > last, "offsets must grow"
        last = m["offset"]
        lines.extend(m["lines"])
    return lines


def log_size(gw: GatewayProcess, task_id: str, stream: str = "stdout") -> int:
    return (gw.data_dir / "logs" / f"{task_id}.{stream}.log").stat().st_size


STALL = ((socket.SOL_SOCKET, socket.SO_RCVBUF, 8192),)  # a client that stops reading stalls soon
PRINT_N = "import sys\nfor i in range({n}):\n    print(i)\n"


# -- connection: init, auth, origin --------------------------------------------------------------
def test_init_has_gpus_pool_and_recent_tasks_with_tails(
    gateway: GatewayProcess, api: Api, connect: Callable[..., Ws]
) -> None:
    task = api.post("/run/sync", json={"code": "print('hello')\nprint('x' * 9000)"}).json()
    ws = connect(gateway)
    init = ws.recv()
    assert init["type"] == "init" and set(init) >= {"gpus", "pool", "tasks"}
    assert [g["index"] for g in init["gpus"]] == [0, 1]
    assert {"name", "memory_total_mb", "utilization_percent", "task_id"} <= set(init["gpus"][0])
    assert init["pool"]["total_gpus"] == 2 and init["pool"]["available_gpus"] == [0, 1]
    (item,) = init["tasks"]
    assert item["task_id"] == task["task_id"] and item["status"] == "completed"
    assert item["stdout"].endswith("x" * 100 + "\n") and item["stdout_truncated"] is True
    assert item["stderr"] == "" and item["stderr_truncated"] is False
    update = ws.until(lambda m: m["type"] == "gpu_update", 10)[-1]
    assert len(update["gpus"]) == 2 and update["pool"]["total_gpus"] == 2


def test_token_is_required_and_header_works(
    gateway: GatewayProcess, connect: Callable[..., Ws]
) -> None:
    for query in ("", "token=wrong"):
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            connect(gateway, query=query)
        assert info.value.status_code == 401
        assert json.loads(info.value.resp_body)["code"] == "unauthorized"
    ws = connect(gateway, query="", header=[f"Authorization: token {TOKEN}"])
    assert ws.recv()["type"] == "init"


def test_foreign_browser_origin_is_refused_unless_allowed(
    start_gateway: Callable[..., GatewayProcess], connect: Callable[..., Ws]
) -> None:
    gw = start_gateway(extra=["--allow-origin", "http://notebook.example:8888"])
    own = gw.url  # the gateway's own page may always connect
    for origin in (own, "http://notebook.example:8888"):
        ws = connect(gw, suppress_origin=False, origin=origin)
        assert ws.recv()["type"] == "init"
        ws.close()
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        connect(gw, suppress_origin=False, origin="http://evil.example")
    assert info.value.status_code == 403


# -- firehose and task updates -------------------------------------------------------------------
def test_firehose_sends_seed_shaped_lines_and_progress_updates(
    gateway: GatewayProcess, api: Api, connect: Callable[..., Ws]
) -> None:
    ws = connect(gateway)
    ws.recv()
    code = (
        "import time, sys\n"
        "for i in range(1, 5):\n"
        "    print(f'[PROGRESS:{i * 25}:step {i}]', flush=True)\n"
        "    print(f'err {i}', file=sys.stderr, flush=True)\n"
        "    time.sleep(0.3)\n"
    )
    task_id = api.submit(code)
    seen = ws.until(is_end(task_id))
    lines = [m for m in seen if m["type"] == "task_output" and m["task_id"] == task_id]
    assert all(set(m) == {"type", "task_id", "stream", "line", "offset"} for m in lines)
    out = [m["line"] for m in lines if m["stream"] == "stdout"]
    assert out == [f"[PROGRESS:{i * 25}:step {i}]" for i in range(1, 5)]
    assert [m["line"] for m in lines if m["stream"] == "stderr"] == [
        f"err {i}" for i in range(1, 5)
    ]
    assert lines[-1]["offset"] == log_size(gateway, task_id, lines[-1]["stream"])
    updates = [m["task"] for m in seen if m["type"] == "task_update"]
    assert [u["status"] for u in updates][0] in ("pending", "queued", "running")
    running = [u for u in updates if u["status"] == "running" and u["progress"] > 0]
    assert running and running[-1]["progress_message"].startswith("step")
    assert updates[-1]["status"] == "completed" and updates[-1]["progress"] == 100


def test_task_deleted_is_forwarded_and_ends_a_subscription(
    gateway: GatewayProcess, api: Api, connect: Callable[..., Ws]
) -> None:
    task_id = api.submit("print('x')")
    api.wait_status(task_id, "completed")
    ws = connect(gateway)
    ws.recv()
    ws.send(type="subscribe", task_id=task_id)
    ws.until(is_end(task_id))
    assert api.delete(f"/task/{task_id}").status_code == 200
    seen = ws.until(lambda m: m["type"] == "task_deleted")
    assert seen[-1] == {"type": "task_deleted", "task_id": task_id}


# -- subscriptions -------------------------------------------------------------------------------
@pytest.mark.slow
def test_subscriber_gets_100k_lines_in_order_exactly_once(
    gateway: GatewayProcess, api: Api, connect: Callable[..., Ws]
) -> None:
    ws = connect(gateway)
    ws.recv()
    task_id = api.submit("import time\ntime.sleep(0.5)\n" + PRINT_N.format(n=100_000))
    ws.send(type="subscribe", task_id=task_id, offset=0)
    seen = ws.until(is_end(task_id), 60)
    ack = next(m for m in seen if m["type"] == "subscribed")
    assert ack["offsets"] == {"stdout": 0, "stderr": 0} and ack["task"]["task_id"] == task_id
    assert not [m for m in seen if m["type"] == "gap"]
    assert subscribed_lines(seen, task_id) == [str(i) for i in range(100_000)]
    last = list(batches(seen, task_id))[-1]
    assert last["offset"] == log_size(gateway, task_id)
    assert not [m for m in seen if m["type"] == "task_output" and "line" in m]


def test_subscribe_mid_run_from_an_offset_gets_that_tail_then_live_lines(
    gateway: GatewayProcess, api: Api, connect: Callable[..., Ws], gate: Gate
) -> None:
    lines = (
        "for i in range({start}, {end}):\n"
        "    print(i, flush=True)\n"
        "    print('e', i, file=sys.stderr, flush=True)\n"
    )
    code = "import sys\n" + lines.format(start=0, end=200) + gate.code
    code += lines.format(start=200, end=400)
    task_id = api.submit(code)
    logs = f"/task/{task_id}/logs"
    wait_for(lambda: len(api.get(logs, params={"stream": "stderr"}).json()["lines"]) == 200, 20)
    out = api.get(logs, params={"stream": "stdout", "tail": 50}).json()
    err = api.get(logs, params={"stream": "stderr", "tail": 20}).json()
    assert api.task(task_id)["status"] == "running"
    first_out, first_err = int(out["lines"][0]), int(err["lines"][0].split()[1])
    assert (first_out, first_err) == (150, 180)
    ws = connect(gateway)
    ws.recv()
    ws.send(
        type="subscribe",
        task_id=task_id,
        offsets={"stdout": out["offset"], "stderr": err["offset"]},
    )
    ack = ws.until(lambda m: m["type"] == "subscribed")[-1]
    assert ack["offsets"] == {"stdout": out["offset"], "stderr": err["offset"]}
    gate.open()  # the rest is printed after the subscription: it comes live
    seen = ws.until(is_end(task_id))
    assert subscribed_lines(seen, task_id) == [str(i) for i in range(first_out, 400)]
    expected_err = [f"e {i}" for i in range(first_err, 400)]
    assert subscribed_lines(seen, task_id, "stderr") == expected_err


def test_terminal_update_comes_after_all_output_of_a_finished_task(
    gateway: GatewayProcess, api: Api, connect: Callable[..., Ws]
) -> None:
    task_id = api.submit(PRINT_N.format(n=5000) + "print('no newline', end='')")
    api.wait_status(task_id, "completed")
    ws = connect(gateway)
    ws.recv()
    ws.send(type="subscribe", task_id=task_id, offset=0)
    seen = ws.until(is_end(task_id))
    assert subscribed_lines(seen, task_id) == [str(i) for i in range(5000)] + ["no newline"]
    ws.send(type="unsubscribe", task_id=task_id)
    assert ws.until(lambda m: m["type"] == "unsubscribed")[-1]["task_id"] == task_id


def test_a_subscriber_gets_only_its_tasks_output_and_the_firehose_after_unsubscribing(
    gateway: GatewayProcess, api: Api, connect: Callable[..., Ws], gate: Gate
) -> None:
    ws = connect(gateway)
    ws.recv()
    mine = api.submit("import time\nfor i in range(60):\n    print('mine', i, flush=True)\n")
    ticker = "import os, time\ni = 0\nwhile not os.path.exists({path!r}):\n"
    ticker += "    print('other', i, flush=True)\n    i += 1\n    time.sleep(0.05)\n"
    other = api.submit(ticker.format(path=str(gate.path)))  # ticks until the gate opens
    ws.send(type="subscribe", task_id=mine)
    seen = ws.until(is_end(mine))
    ack = next(i for i, m in enumerate(seen) if m["type"] == "subscribed")
    outputs = [m for m in seen[ack:] if m["type"] == "task_output"]
    assert outputs and all(m["task_id"] == mine and "lines" in m for m in outputs)
    assert subscribed_lines(seen, mine) == [f"mine {i}" for i in range(60)]
    ws.send(type="unsubscribe", task_id=mine)
    ws.until(lambda m: m["type"] == "unsubscribed")
    line = ws.until(lambda m: m["type"] == "task_output")[-1]  # the firehose again
    assert line["task_id"] == other and line["line"].startswith("other ")
    gate.open()
    api.wait_status(other, "completed")


def test_bad_messages_get_errors_and_keep_the_connection(
    gateway: GatewayProcess, connect: Callable[..., Ws]
) -> None:
    ws = connect(gateway)
    ws.recv()
    ws.conn.send("not json")
    ws.send(type="dance")
    ws.send(type="subscribe")
    ws.send(type="subscribe", task_id="nope")
    ws.send(type="subscribe", task_id="nope", offset=-1)
    errors = [ws.until(lambda m: m["type"] == "error")[-1] for _ in range(5)]
    assert [e["code"] for e in errors] == ["bad_message"] * 3 + ["task_not_found", "bad_message"]
    assert errors[3]["task_id"] == "nope" and "not found" in errors[3]["detail"]


# -- slow clients --------------------------------------------------------------------------------
BIG_LINES = "line = 'x' * 200\nfor i in range({n}):\n    print(i, line)\n"


def test_a_subscriber_that_falls_behind_gets_a_gap_and_resumes_from_it(
    gateway: GatewayProcess, api: Api, connect: Callable[..., Ws]
) -> None:
    ws = connect(gateway, sockopt=STALL)
    ws.recv()
    n = 40_000  # ~8 MB: more than the socket buffers and the client's budget together
    task_id = api.submit(BIG_LINES.format(n=n))
    ws.send(type="subscribe", task_id=task_id, offset=0)
    api.wait_status(task_id, "completed", timeout_s=60)  # not reading meanwhile
    seen = ws.until(lambda m: m["type"] == "gap" or is_end(task_id)(m))
    gap = seen[-1]
    assert gap["type"] == "gap" and gap["task_id"] == task_id and gap["stream"] == "stdout"
    assert gap["offsets"] == {"stdout": gap["offset"], "stderr": 0}
    before = subscribed_lines(seen, task_id)
    assert list(batches(seen, task_id))[-1]["offset"] == gap["offset"]
    ws.send(type="subscribe", task_id=task_id, offsets=gap["offsets"])
    stale = ws.until(lambda m: m["type"] == "subscribed")
    assert [m["type"] for m in stale if m["type"] in ("gap", "task_output")] == []
    after = subscribed_lines(ws.until(is_end(task_id)), task_id)
    assert [int(line.split()[0]) for line in before + after] == list(range(n))


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match
    return int(match.group(1)) / 1024


@pytest.mark.slow
def test_stalled_clients_get_a_gap_and_do_not_grow_the_gateways_memory(
    gateway: GatewayProcess, api: Api, connect: Callable[..., Ws]
) -> None:
    """Two clients stop reading (a firehose one and a subscriber) while a job prints ~80 MB,
    ten times the budget of both: the job completes, the gateway's memory grows by less than
    four budgets (not by the output), and the subscriber is told of its gap. (What stalled
    clients cost the job's speed is a figure of bench/bench_stream.py, not a test.)"""
    pid = gateway.proc.pid  # type: ignore[union-attr]
    base_rss = _rss_mb(pid)
    firehose, subscriber = (connect(gateway, sockopt=STALL) for _ in range(2))
    firehose.recv()
    subscriber.recv()
    n = 400_000  # lines of ~207 bytes
    task_id = api.submit(BIG_LINES.format(n=n))
    subscriber.send(type="subscribe", task_id=task_id, offset=0)
    peak = base_rss
    while api.task(task_id)["status"] not in ("completed", "failed"):
        peak = max(peak, _rss_mb(pid))
        time.sleep(0.05)
    peak = max(peak, _rss_mb(pid))
    assert api.task(task_id)["status"] == "completed"
    assert log_size(gateway, task_id) > 75 * 2**20
    budget_mb = 2 * OUTBOX_BYTES / 2**20
    assert peak - base_rss < 4 * budget_mb, f"RSS grew by {peak - base_rss:.0f} MB"
    seen = subscriber.until(lambda m: m["type"] == "gap" or is_end(task_id)(m), 60)
    assert seen[-1]["type"] == "gap" and seen[-1]["task_id"] == task_id


# -- lifecycle -----------------------------------------------------------------------------------
def test_clients_that_leave_are_forgotten_and_gpu_updates_go_on(
    gateway: GatewayProcess, connect: Callable[..., Ws]
) -> None:
    # How often gpu_update comes (one timer for all clients, not one per past client) is a
    # figure of bench/bench_gateway.py; here: each client is forgotten, the updates go on.
    for _ in range(5):
        ws = connect(gateway)
        assert ws.recv()["type"] == "init"
        ws.close()
    wait_for(lambda: gateway.log().count("(0 connected)") == 5, 10, what="clients forgotten")
    ws = connect(gateway)
    ws.recv()
    update = ws.until(lambda m: m["type"] == "gpu_update", 10)[-1]
    assert len(update["gpus"]) == 2 and update["pool"]["total_gpus"] == 2
    counts = re.findall(r"client \S+ connected \((\d+) connected\)", gateway.log())
    assert counts == ["1"] * 6


# -- task_update rate ----------------------------------------------------------------------------
def test_progress_updates_are_rate_limited_and_the_last_one_arrives(
    gateway: GatewayProcess, api: Api, connect: Callable[..., Ws], gate: Gate
) -> None:
    ws = connect(gateway)
    ws.recv()
    lines = 500  # each in its own chunk: a pause after each
    code = (
        "import time\n"
        f"for i in range({lines}):\n"
        "    print(f'[PROGRESS:{i / 10}:step {i}]', flush=True)\n"
        "    time.sleep(0.002)\n"
        "print('[PROGRESS:73:last]', flush=True)\n" + gate.code
    )
    task_id = api.submit(code)

    def last_progress(m: Message) -> bool:
        return (
            m["type"] == "task_update"
            and m["task"]["task_id"] == task_id
            and m["task"]["progress"] == 73
        )

    seen = ws.until(last_progress, 60)
    updates = [m["task"] for m in seen if m["type"] == "task_update"]
    updates = [u for u in updates if u["task_id"] == task_id]
    assert updates[-1]["progress_message"] == "last" and updates[-1]["status"] == "running"
    # at most 5 a second: far fewer updates than progress lines (typically ~10)
    assert len(updates) < lines // 5, len(updates)
    assert api.task(task_id)["progress"] == 73
    gate.open()
    ws.until(is_end(task_id))

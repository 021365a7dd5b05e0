"""`WS /ws` against a real gateway with real WebSocket clients: shapes, subscriptions, gaps,
slow clients, and the one GPU timer."""

from __future__ import annotations

import functools
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket

from tests.support import TOKEN, Api, GatewayProcess, wait_for

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
    gateway: GatewayProcess, api: Api, connect: Callable[..., Ws]
) -> None:
    code = (
        "import sys, time\n"
        "for i in range(400):\n"
        "    print(i, flush=True)\n"
        "    print('e', i, file=sys.stderr, flush=True)\n"
        "    time.sleep(0.005)\n"
    )
    task_id = api.submit(code)
    logs = f"/task/{task_id}/logs"
    wait_for(lambda: len(api.get(logs, params={"stream": "stdout"}).json()["lines"]) >= 100, 20)
    out = api.get(logs, params={"stream": "stdout", "tail": 50}).json()
    err = api.get(logs, params={"stream": "stderr", "tail": 20}).json()
    assert api.task(task_id)["status"] == "running"
    first_out, first_err = int(out["lines"][0]), int(err["lines"][0].split()[1])
    ws = connect(gateway)
    ws.recv()
    ws.send(
        type="subscribe",
        task_id=task_id,
        offsets={"stdout": out["offset"], "stderr": err["offset"]},
    )
    seen = ws.until(is_end(task_id))
    ack = next(m for m in seen if m["type"] == "subscribed")
    assert ack["offsets"] == {"stdout": out["offset"], "stderr": err["offset"]}
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
    gateway: GatewayProcess, api: Api, connect: Callable[..., Ws]
) -> None:
    ticker = "import time\nfor i in range({n}):\n    print({name!r}, i, flush=True)\n"
    ticker += "    time.sleep(0.05)\n"
    ws = connect(gateway)
    ws.recv()
    mine = api.submit(ticker.format(name="mine", n=60))
    other = api.submit(ticker.format(name="other", n=1000))
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
    api.post(f"/task/{other}/cancel")


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


def _timed_job(
    api: Api, pid: int, n: int, watch: Callable[[str], None] | None = None
) -> tuple[float, float]:
    """Run a job printing ``n`` lines (``watch(task_id)`` first, if given); the job's own
    wall time, and the gateway's peak RSS (MB) meanwhile."""
    code = (
        "import time\ntime.sleep(0.5)\nt = time.monotonic()\n"
        + PRINT_N.format(n=n)
        + "print('WALL', time.monotonic() - t)\n"
    )
    task_id = api.submit(code)
    if watch is not None:
        watch(task_id)
    peak = _rss_mb(pid)
    while api.task(task_id)["status"] not in ("completed", "failed"):
        peak = max(peak, _rss_mb(pid))
        time.sleep(0.1)
    last = api.get(f"/task/{task_id}/logs", params={"stream": "stdout", "tail": 1}).json()
    assert api.task(task_id)["status"] == "completed", last
    return float(last["lines"][-1].split()[1]), peak


@pytest.mark.slow
def test_stalled_clients_do_not_slow_the_job_nor_grow_memory(
    gateway: GatewayProcess, api: Api, connect: Callable[..., Ws]
) -> None:
    pid = gateway.proc.pid  # type: ignore[union-attr]
    n = 1_000_000
    peaks: list[float] = []

    def alone() -> float:
        return _timed_job(api, pid, n)[0]

    def stalled() -> float:
        # Two clients that stopped reading: one on the firehose, one subscribed to the job. A
        # small receive buffer and a first, shorter job make them stall before the timed one
        # (until then the kernel still takes what they could read later).
        clients = [connect(gateway, sockopt=STALL) for _ in range(2)]
        watch = functools.partial(clients[1].send, type="subscribe", offset=0)
        _timed_job(api, pid, 200_000, lambda task_id: watch(task_id=task_id))
        wall, peak = _timed_job(api, pid, n, lambda task_id: watch(task_id=task_id))
        peaks.append(peak)
        for client in clients:
            client.abort()
        return wall

    base_rss = _rss_mb(pid)
    pairs: list[tuple[float, float]] = []  # (alone, stalled), run back to back

    def within_ratio() -> bool:
        # The load of a small shared machine changes from second to second: compare runs made
        # back to back, the best pair of up to three, with a floor of 0.3 s against the noise.
        return any(watched <= 1.2 * free + 0.3 for free, watched in pairs)

    while len(pairs) < 3 and not within_ratio():
        pairs.append((alone(), stalled()))
    assert within_ratio(), pairs
    assert max(peaks) - base_rss < 100, f"the gateway's RSS grew by {max(peaks) - base_rss:.0f} MB"


# -- lifecycle -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_connect_disconnect_cycles_leave_one_gpu_timer(
    gateway: GatewayProcess, connect: Callable[..., Ws]
) -> None:
    for _ in range(5):
        ws = connect(gateway)
        assert ws.recv()["type"] == "init"
        ws.close()
    wait_for(lambda: gateway.log().count("(0 connected)") == 5, 10, what="clients forgotten")
    ws = connect(gateway)
    ws.recv()
    start = time.monotonic()
    stamps: list[float] = []
    while time.monotonic() - start < 4.5:
        if ws.recv(10)["type"] == "gpu_update":
            stamps.append(time.monotonic())
    assert 2 <= len(stamps) <= 3, stamps  # one update every 2 s, not one per past client
    assert all(b - a > 1.5 for a, b in zip(stamps, stamps[1:], strict=False)), stamps
    counts = re.findall(r"client \S+ connected \((\d+) connected\)", gateway.log())
    assert counts == ["1"] * 6

"""`VrunGPUClient.stream` and `wait_for_task(on_line=...)` against a real gateway, through a
real TCP proxy that can cut or stall the connection."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import TOKEN, Api, GatewayProcess
from vrungpu_magic.client import VrunGPUClient, VrunGPUError

Event = dict[str, Any]
GAP = b'"type": "gap"'


class Proxy:
    """A loopback TCP proxy: ``drop()`` cuts every connection, ``pause()`` stops forwarding
    the gateway's bytes (so the gateway sees a client that stopped reading)."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.flowing = threading.Event()
        self.flowing.set()
        self.sockets: list[socket.socket] = []
        self.gaps = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.socket()
            upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
            upstream.connect(("127.0.0.1", self.target))
            with self.lock:
                self.sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_gateway: bool) -> None:
        tail = b""  # the gateway's frames are not masked: count the gaps it sends
        try:
            while data := src.recv(65536):
                if from_gateway:
                    self.flowing.wait()
                    seen = tail + data
                    with self.lock:
                        self.gaps += seen.count(GAP)
                    tail = seen[-(len(GAP) - 1) :]
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                sock.close()

    def drop(self) -> None:
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self.sockets.clear()

    def close(self) -> None:
        self.flowing.set()
        self.server.close()
        self.drop()


@pytest.fixture
def proxy(gateway: GatewayProcess) -> Iterator[Proxy]:
    p = Proxy(int(gateway.url.rsplit(":", 1)[1]))
    yield p
    p.close()


@pytest.fixture
def client(gateway: GatewayProcess) -> VrunGPUClient:
    return VrunGPUClient(gateway.url, TOKEN)


def outputs(events: list[Event], stream: str = "stdout") -> list[str]:
    return [
        line
        for e in events
        if e["type"] == "output" and e["stream"] == stream
        for line in e["lines"]
    ]


PRINT_SLOWLY = (
    "import sys, time\n"
    "for i in range({n}):\n"
    "    print(i, flush=True)\n"
    "    if i % 100 == 0:\n"
    "        print('e', i, file=sys.stderr, flush=True)\n"
    "        time.sleep(0.02)\n"
)


def test_stream_yields_the_task_then_its_output_and_ends(client: VrunGPUClient) -> None:
    task_id = client.run_async(PRINT_SLOWLY.format(n=2000) + "print('[PROGRESS:50:half]')")
    events = list(client.stream(task_id, timeout=60))
    assert events[0]["type"] == "task" and events[0]["task"]["task_id"] == task_id
    assert events[-1]["type"] == "task" and events[-1]["task"]["status"] == "completed"
    assert outputs(events) == [str(i) for i in range(2000)] + ["[PROGRESS:50:half]"]
    assert outputs(events, "stderr") == [f"e {i}" for i in range(0, 2000, 100)]
    for e in events:
        assert set(e) == (
            {"type", "task"} if e["type"] == "task" else {"type", "stream", "lines", "offset"}
        )
    last_out = [e for e in events if e["type"] == "output" and e["stream"] == "stdout"][-1]
    again = list(client.stream(task_id, last_out["offset"], stderr_offset=10**9))
    assert [e["type"] for e in again] == ["task", "task"]  # nothing after those offsets
    assert again[0] == again[1] == events[-1]


def test_stream_from_offsets_yields_only_what_follows(client: VrunGPUClient, api: Api) -> None:
    task_id = client.run_async(PRINT_SLOWLY.format(n=500))
    client.wait_for_task(task_id, timeout=60)
    out = api.get(f"/task/{task_id}/logs", params={"stream": "stdout", "tail": 7}).json()
    err = api.get(f"/task/{task_id}/logs", params={"stream": "stderr", "tail": 2}).json()
    events = list(client.stream(task_id, out["offset"], stderr_offset=err["offset"]))
    assert outputs(events) == [str(i) for i in range(493, 500)]
    assert outputs(events, "stderr") == ["e 300", "e 400"]


def test_wait_for_task_with_on_line_gets_every_line(client: VrunGPUClient) -> None:
    seen: list[tuple[str, str]] = []
    task_id = client.run_async(PRINT_SLOWLY.format(n=1000))
    task = client.wait_for_task(task_id, timeout=60, on_line=lambda s, line: seen.append((s, line)))
    assert task["status"] == "completed" and task["stdout"].endswith("999\n")
    assert [line for s, line in seen if s == "stdout"] == [str(i) for i in range(1000)]
    assert [line for s, line in seen if s == "stderr"] == [f"e {i}" for i in range(0, 1000, 100)]


def test_stream_reconnects_after_drops_without_loss_or_doubles(proxy: Proxy, api: Api) -> None:
    task_id = api.submit(PRINT_SLOWLY.format(n=3000))
    client = VrunGPUClient(proxy.url, TOKEN)
    events: list[Event] = []
    drops = 0
    for event in client.stream(task_id, timeout=60):
        events.append(event)
        if event["type"] == "output" and drops < 2 and len(outputs(events)) > 500 * (drops + 1):
            proxy.drop()
            drops += 1
    assert drops == 2
    assert outputs(events) == [str(i) for i in range(3000)]
    assert outputs(events, "stderr") == [f"e {i}" for i in range(0, 3000, 100)]


def test_stream_resumes_from_a_gap_when_it_fell_behind(
    proxy: Proxy, api: Api, gateway: GatewayProcess
) -> None:
    n = 40_000  # ~8 MB of output while nothing reaches the client: more than its budget
    task_id = api.submit(f"line = 'x' * 200\nfor i in range({n}):\n    print(i, line)\n")
    client = VrunGPUClient(proxy.url, TOKEN)
    stream = client.stream(task_id, timeout=60)
    first = next(stream)
    assert first["type"] == "task"
    proxy.flowing.clear()
    api.wait_status(task_id, "completed", timeout_s=60)
    proxy.flowing.set()
    events = [first, *stream]
    assert proxy.gaps >= 1
    assert [int(line.split()[0]) for line in outputs(events)] == list(range(n))
    assert events[-1]["task"]["status"] == "completed"


def test_stream_errors(client: VrunGPUClient, gateway: GatewayProcess) -> None:
    with pytest.raises(VrunGPUError) as info:
        list(client.stream("no-such-task"))
    assert info.value.status == 404 and info.value.code == "task_not_found"
    task_id = client.run_async("import time\ntime.sleep(30)")
    with pytest.raises(VrunGPUError) as info:
        list(VrunGPUClient(gateway.url, "wrong").stream(task_id))
    assert info.value.status == 401
    with pytest.raises(TimeoutError):
        list(client.stream(task_id, timeout=1))
    client.cancel(task_id)

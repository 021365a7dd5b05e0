"""Stock Jupyter against our gateway: a real `jupyter server --gateway-url` (jupyter_server's
own gateway client) starts a kernel here, and its channels carry a notebook's traffic."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.kernel_helpers import Channels
from tests.support import GatewayProcess, wait_for

JUPYTER_TOKEN = "jupyter-test-token-0123456789"
FIGURE = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"
SLEEP_CELL = "import time\nprint('sleeping', flush=True)\ntime.sleep(60)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class JupyterServer:
    """`jupyter server --gateway-url=...` on a free loopback port, stopped by pid."""

    def __init__(self, root: Path, gateway: GatewayProcess) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "JUPYTER_CONFIG_DIR": str(root / "config"),
            "JUPYTER_DATA_DIR": str(root / "data"),
            "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
        }
        cmd = [
            sys.executable,
            "-m",
            "jupyter_server",
            f"--gateway-url={gateway.url}",
            f"--GatewayClient.auth_token={gateway.token}",
            f"--IdentityProvider.token={JUPYTER_TOKEN}",
            "--allow-root",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={root}",
            "--no-browser",
        ]
        self.log_path = root / "jupyter.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {JUPYTER_TOKEN}"
        wait_for(self._up, 60, interval_s=0.2, what="jupyter server start")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"jupyter server exited:\n{self.log_path.read_text()}")
        try:
            return self.session.get(self.url + "/api/status", timeout=5).status_code == 200
        except requests.ConnectionError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def jupyter(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> Iterator[tuple[JupyterServer, GatewayProcess]]:
    gateway = start_gateway()
    server = JupyterServer(tmp_path / "jupyter", gateway)
    yield server, gateway
    server.stop()


async def test_a_notebook_through_jupyter_server_runs_on_a_gateway_gpu(
    jupyter: tuple[JupyterServer, GatewayProcess],
) -> None:
    server, gateway = jupyter
    status = server.session.get(server.url + "/api/status", timeout=30)
    assert status.status_code == 200, status.text  # it lists the gateway's kernels
    specs = server.session.get(server.url + "/api/kernelspecs", timeout=30).json()
    assert "vrungpu-1gpu" in specs["kernelspecs"]
    res = server.session.post(
        server.url + "/api/kernels", json={"name": "vrungpu-1gpu"}, timeout=60
    )
    assert res.status_code == 201, res.text
    kernel_id = res.json()["id"]
    assert gateway.api.get("/gpu/pool").json()["allocations"] == {kernel_id: [0]}

    url = f"ws://127.0.0.1:{server.port}/api/kernels/{kernel_id}/channels?token={JUPYTER_TOKEN}"
    ch = await Channels.open(url)
    try:
        assert (await ch.execute("x = 41")).status == "ok"
        assert (await ch.execute("x + 1")).result() == "42"
        env = await ch.execute("import os; print(os.environ['CUDA_VISIBLE_DEVICES'])")
        assert env.stdout.strip() == "0"
        figure = await ch.execute(FIGURE, timeout_s=120)
        shown = [m["content"]["data"] for m in figure.of_type("display_data")]
        assert shown and "image/png" in shown[0] and "text/plain" in shown[0]
        sleeping = await ch.send("shell", "execute_request", {"code": SLEEP_CELL})
        await ch.printed(sleeping, "sleeping")
        interrupt = server.session.post(
            server.url + f"/api/kernels/{kernel_id}/interrupt", timeout=30
        )
        assert interrupt.status_code == 204, interrupt.text
        reply = await ch.reply(sleeping)
        assert reply["content"]["ename"] == "KeyboardInterrupt"
    finally:
        await ch.close()
    deleted = server.session.delete(server.url + f"/api/kernels/{kernel_id}", timeout=30)
    assert deleted.status_code == 204, deleted.text
    assert gateway.api.get("/gpu/pool").json()["allocations"] == {}
    assert gateway.api.get("/api/kernels").json() == []

"""TLS: a gateway with --certfile/--keyfile serves https and wss; the Python client, its
WebSocket, the `vrungpu` command and the magic's client trust it through a CA bundle
(``trustme``: a throwaway CA and a certificate for 127.0.0.1 and localhost)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import trustme

from tests.support import REPO, TOKEN, GatewayProcess
from vrungpu_magic.client import VrunGPUClient, VrunGPUError

JOB = "import sys\nfor i in range(3):\n    print('line', i, flush=True)\nsys.exit(3)\n"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    with open(paths["cert"], "wb") as fh:  # the chain: the server's certificate first
        for blob in server.cert_chain_pems:
            fh.write(blob.bytes())
    return paths


@pytest.fixture(scope="module")
def tls_gateway(
    tmp_path_factory: pytest.TempPathFactory, certs: dict[str, Path]
) -> Iterator[GatewayProcess]:
    extra = ["--certfile", str(certs["cert"]), "--keyfile", str(certs["key"])]
    gw = GatewayProcess(tmp_path_factory.mktemp("tls-gateway"), extra=extra).start()
    yield gw
    gw.stop()


def test_the_banner_and_gateway_json_say_https(tls_gateway: GatewayProcess) -> None:
    assert tls_gateway.url.startswith("https://127.0.0.1:")
    log = tls_gateway.log()
    assert f"Listening on {tls_gateway.url}\n" in log
    assert f"dashboard: {tls_gateway.url}/dashboard/" in log


def test_client_round_trip_and_websocket_follow(
    tls_gateway: GatewayProcess, certs: dict[str, Path]
) -> None:
    client = VrunGPUClient(tls_gateway.url, TOKEN, ca_bundle=str(certs["ca"]))
    assert client.check_health()["service"] == "VrunGPU"
    task_id = client.run_async(JOB)
    lines: list[str] = []
    task = client.wait_for_task(task_id, timeout=60, on_line=lambda _s, line: lines.append(line))
    assert lines == ["line 0", "line 1", "line 2"]  # over wss://
    assert (task["status"], task["return_code"]) == ("failed", 3)


def test_the_ca_bundle_comes_from_the_environment_too(
    tls_gateway: GatewayProcess, certs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VRUNGPU_CA_BUNDLE", str(certs["ca"]))
    client = VrunGPUClient(tls_gateway.url, TOKEN)
    assert client.clone().ca_bundle == str(certs["ca"])  # threads' clients trust it too
    assert client.check_health()["service"] == "VrunGPU"


def test_an_untrusted_certificate_is_one_clear_error(tls_gateway: GatewayProcess) -> None:
    client = VrunGPUClient(tls_gateway.url, TOKEN)  # the system's CAs only
    with pytest.raises(VrunGPUError) as caught:
        client.check_health()
    assert caught.value.code == "tls"
    assert "not trusted; give its CA bundle" in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1


def test_plain_http_to_the_tls_port_fails_cleanly(
    tls_gateway: GatewayProcess, certs: dict[str, Path]
) -> None:
    plain = tls_gateway.url.replace("https://", "http://")
    with pytest.raises(requests.ConnectionError):
        requests.get(plain + "/health", timeout=10)
    with pytest.raises(VrunGPUError) as caught:
        VrunGPUClient(plain, TOKEN).check_health()
    assert caught.value.code == "unreachable"
    # the gateway shrugs it off: no traceback, and https still answers
    res = requests.get(tls_gateway.url + "/health", verify=str(certs["ca"]), timeout=10)
    assert res.json() == {"status": "ok"}
    assert "Traceback" not in tls_gateway.log()


def _vrungpu(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vrungpu_magic.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_vrungpu_command_over_tls(
    tls_gateway: GatewayProcess, certs: dict[str, Path], tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRUNGPU_")}
    env.update(VRUNGPU_CONFIG=str(tmp_path / "config.json"), PYTHONUNBUFFERED="1")
    script = tmp_path / "job.py"
    script.write_text(JOB)
    url, ca = tls_gateway.url, str(certs["ca"])
    refused = _vrungpu(env, "--url", url, "--token", TOKEN, "gpus")
    assert refused.returncode == 1 and "not trusted" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    done = _vrungpu(env, "--url", url, "--token", TOKEN, "--ca-bundle", ca, "run", str(script))
    assert done.returncode == 3, done.stderr
    assert done.stdout.splitlines()[-3:] == ["line 0", "line 1", "line 2"]
    saved = _vrungpu(env, "connect", url, "--token", TOKEN, "--ca-bundle", ca)
    assert saved.returncode == 0, saved.stderr
    assert json.loads((tmp_path / "config.json").read_text())["ca_bundle"] == ca
    listed = _vrungpu(env, "ls", "--json")  # URL, token and CA bundle from the config file
    assert listed.returncode == 0, listed.stderr
    assert any(task["status"] == "failed" for task in json.loads(listed.stdout))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--certfile", "{cert}"], "--certfile and --keyfile go together: give both for TLS"),
        (["--keyfile", "{key}"], "--certfile and --keyfile go together: give both for TLS"),
        (["--certfile", "{missing}", "--keyfile", "{key}"], "--certfile {missing}: not a readable"),
        (["--certfile", "{key}", "--keyfile", "{key}"], "--certfile {key} / --keyfile {key}: not"),
    ],
    ids=["cert-alone", "key-alone", "missing-cert", "not-a-certificate"],
)
def test_bad_tls_flags_are_one_line(
    tmp_path: Path, certs: dict[str, Path], args: list[str], expected: str
) -> None:
    names = {"cert": certs["cert"], "key": certs["key"], "missing": tmp_path / "nope.pem"}
    argv = [a.format(**names) for a in args]
    cmd = [sys.executable, "-m", "vrungpu_gateway", "--port", "0", "--gpus", "none"]
    cmd += ["--data-dir", str(tmp_path / "data"), "--token", TOKEN, *argv]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRUNGPU_")}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("vrungpu-gateway: " + expected.format(**names)), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1

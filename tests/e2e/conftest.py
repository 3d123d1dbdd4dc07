"""One real `omax serve` for the whole e2e tier: embedded cluster, uvicorn, real model.

Started as a subprocess exactly as a user starts it, on a free port, with the origin
and worker stores in a temporary folder; the bundled SmolLM2 is imported at start
as ``smollm2:135m``. Tests share it (and the model it loads) to keep the suite fast.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

OMAX = str(Path(sys.executable).with_name("omax"))
DEMO = "smollm2:135m"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp: Path, *args: str, env: dict | None = None):
    port = free_port()
    log = open(tmp / f"serve-{port}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [OMAX, "serve", "--port", str(port), "--dashboard", ":0", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={
            **os.environ,
            "DASK_OMAX__STORE__URL": str(tmp / "origin"),
            "DASK_OMAX__WORKER__STORE": str(tmp / "workers" / "{name}"),
            **(env or {}),
        },
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"omax serve exited:\n{(tmp / f'serve-{port}.log').read_text()}")
        try:
            if httpx.get(url + "/", timeout=1).status_code == 200:
                return proc, url, tmp / f"serve-{port}.log"
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("omax serve did not answer within 180 s")


def stop_server(proc) -> int:
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return -9


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("omax-e2e")
    proc, url, log = start_server(tmp)
    yield url
    code = stop_server(proc)
    text = log.read_text()
    assert code == 0, text[-4000:]
    assert "KeyboardInterrupt" not in text, text[-4000:]  # Ctrl-C stops every process cleanly


@pytest.fixture(scope="session")
def ollama_client(server):
    import ollama

    return ollama.Client(host=server, timeout=300)

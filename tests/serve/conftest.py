"""A real uvicorn server on 127.0.0.1 serving the app over ``FakeRuntime``."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import uvicorn

from omax.serve.app import build_app
from tests.fake_runtime import FakeRuntime

MAX_BODY = 64 * 1024


@dataclass
class Served:
    url: str
    runtime: FakeRuntime


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(app) -> tuple[uvicorn.Server, threading.Thread, str]:
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def served() -> Iterator[Served]:
    runtime = FakeRuntime()
    server, thread, url = _start(build_app(runtime, max_body_bytes=MAX_BODY))
    yield Served(url, runtime)
    server.should_exit = True
    thread.join(timeout=5)


@pytest.fixture
def runtime(served: Served) -> FakeRuntime:
    served.runtime.scripts.clear()
    return served.runtime


@pytest.fixture
def http(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=10) as client:
        yield client

"""The scheduler killed and restarted with its worker, under a real front door.

Real processes: ``dask scheduler`` and ``dask worker`` with the omax preloads, an
``omax serve --scheduler`` front door, and the official ``ollama`` client. The
scheduler and its worker are SIGKILLed; during the outage requests get a 503 within
5 s and ``/api/health`` is 503; the scheduler comes back on the same address after
2 s, then after 60 s (past the 30 s after which Dask's client gives up), and the same
front door serves again within 15 s of the worker's return (its registration
with the scheduler; its process start is a few seconds before, imports mostly).

The model is a tiny random llama (tests/tiny.py) that loads in well under a second,
so the recovery time measured is the front door's and the cluster's, not a model
load competing for a shared machine's cores (SmolLM2's int4 load is seconds idle,
tens of seconds on two busy cores).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import free_port, start_server, stop_server
from tests.plugins.dask_procs import DASK, _drain, start_worker, stop, tail, wait_for_line
from tests.tiny import tiny_llama

pytestmark = [pytest.mark.cluster, pytest.mark.e2e, pytest.mark.slow]

ollama = pytest.importorskip("ollama")

OUTAGE_503_S = 5.0  # a request during the outage is refused within this
RECOVERY_S = 15.0  # served again within this of the worker's return (registration)
OPTIONS = {"num_predict": 4, "temperature": 0}
MODEL = "tiny:latest"


class Cluster:
    """A scheduler on a fixed port and one named worker, killed and restarted at will."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "DASK_OMAX__STORE__URL": str(tmp / "origin"),
            "DASK_OMAX__WORKER__STORE": str(tmp / "workers" / "{name}"),
        }
        self.procs: list[subprocess.Popen] = []

    def start(self) -> float:
        """Start the scheduler, then the worker; the worker's start time (monotonic)."""
        sched = subprocess.Popen(
            [
                DASK,
                "scheduler",
                "--port",
                str(self.port),
                "--dashboard-address",
                ":0",
                "--preload",
                "omax.plugins.scheduler",
            ],
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        wait_for_line(r"Scheduler at:\s+tcp://", sched)
        _drain(sched)
        started = time.monotonic()
        worker = start_worker(self.address, self.env, "--no-nanny", "--name", "w1")
        self.procs = [sched, worker]
        return started

    def kill(self) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait(10)

    def stop(self) -> None:
        stop(*reversed(self.procs))


def _health(url: str) -> httpx.Response:
    return httpx.get(url + "/api/health", timeout=10)


def _wait(what: str, check, timeout: float) -> float:
    """Seconds until ``check()`` holds; fails after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout} s")


@pytest.fixture(scope="module")
def front_door(tmp_path_factory):
    from omax.sharding.modelstore import ModelStore

    tmp = tmp_path_factory.mktemp("omax-faults")
    ModelStore(str(tmp / "origin")).import_path(tiny_llama(tmp / "tiny"), MODEL)
    cluster = Cluster(tmp)
    cluster.start()
    serve, url, log = start_server(tmp, "--scheduler", cluster.address, "--no-demo")
    try:
        _wait("a ready front door", lambda: _health(url).status_code == 200, 60)
        yield cluster, url, log
    finally:
        code = stop_server(serve)
        cluster.stop()
        assert code == 0, log.read_text()[-4000:]


def _registered_at(worker: subprocess.Popen) -> float | None:
    """When the worker registered with the scheduler (epoch seconds), from its log."""
    for line in list(worker.log):  # type: ignore[attr-defined]
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*Registered to:", line)
        if m:
            when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
            return when.timestamp() + int(m.group(2)) / 1000
    return None


def _since(end: float | None, start: float | None) -> str:
    return "?" if end is None or start is None else f"{end - start:.1f}"


def _generate(client):
    return client.generate(model=MODEL, prompt="hello", raw=True, options=OPTIONS)


def _refused_quickly(client, url: str) -> float:
    """A generate during the outage: a 503 with an error message, within the bound."""
    start = time.monotonic()
    with pytest.raises(ollama.ResponseError) as caught:
        _generate(client)
    took = time.monotonic() - start
    assert caught.value.status_code == 503, caught.value
    assert caught.value.error
    assert took < OUTAGE_503_S, took
    r = _health(url)
    assert r.status_code == 503 and r.json()["status"] == "unavailable", r.text
    assert r.json()["reason"]
    assert httpx.get(url + "/", timeout=5).text == "Ollama is running"  # liveness
    return took


@pytest.mark.parametrize("outage", [2, 60], ids=lambda s: f"back-after-{s}s")
def test_front_door_serves_again_after_a_scheduler_restart(front_door, outage):
    cluster, url, log = front_door
    # A fresh connection per request: a kept-alive one that the server closes as idle
    # just as a request goes out would fail it, a client-side race outside this test.
    client = ollama.Client(host=url, timeout=60, limits=httpx.Limits(max_keepalive_connections=0))
    assert _generate(client).done
    assert _health(url).status_code == 200

    cluster.kill()
    killed = time.monotonic()
    to_unready = _wait("health 503", lambda: _health(url).status_code == 503, OUTAGE_503_S)
    refused = [_refused_quickly(client, url)]
    if outage > 35:  # past the 30 s after which Dask's client closes for good
        time.sleep(max(0.0, killed + 35 - time.monotonic()))
        refused.append(_refused_quickly(client, url))
    time.sleep(max(0.0, killed + outage - time.monotonic()))

    back = cluster.start()
    statuses = []
    served = None
    while time.monotonic() - back < RECOVERY_S + 45 and served is None:
        try:
            if _generate(client).done:
                served = time.time()
        except ollama.ResponseError as e:
            statuses.append((e.status_code, e.error))
            time.sleep(0.25)
    registered = _registered_at(cluster.procs[1])
    report = (
        f"outage {outage} s: health 503 after {to_unready:.2f} s, requests refused in "
        f"{', '.join(f'{t:.2f}' for t in refused)} s; served again "
        f"{_since(served, registered)} s after the worker registered, "
        f"{_since(served, time.time() - (time.monotonic() - back))} s after its process "
        f"started; statuses while recovering {sorted({code for code, _ in statuses})}"
    )
    print(report)
    assert served is not None and registered is not None, report + "\n" + tail(*cluster.procs)
    assert served - registered < RECOVERY_S, report + "\n" + tail(*cluster.procs)
    # While the cluster comes back: 503s (scheduler away, no slot yet). A model load
    # that fails on the worker is its own error, passed on; the front door itself
    # never fails a request with a 500 of its own.
    unexpected = [
        (code, error)
        for code, error in statuses
        if code != 503 and not error.startswith("failed to load model")
    ]
    assert not unexpected, f"{report}\n{unexpected}\n" + log.read_text()[-4000:]
    health = _health(url)
    assert health.status_code == 200, health.text
    assert health.json()["status"] == "ok" and health.json()["workers"] == 1
    assert MODEL in health.json()["models"]
    # catalog and replica intact: the worker came back with its complete replica
    names = [m["model"] for m in client.list().models]
    assert MODEL in names
    digest = next(m.digest for m in client.list().models if m.model == MODEL)
    workers = httpx.get(url + "/api/cluster", timeout=10).json()["workers"]
    assert workers[0]["replicas"][digest]["complete"]


def test_front_door_stops_cleanly_while_its_scheduler_is_away(tmp_path):
    """Ctrl-C during an outage: the front door exits at once and cleanly, its client
    still retrying or not."""
    cluster = Cluster(tmp_path)
    cluster.start()
    serve, url, log = start_server(tmp_path, "--scheduler", cluster.address, "--no-demo")
    try:
        cluster.kill()
        _wait("health 503", lambda: _health(url).status_code == 503, OUTAGE_503_S)
    finally:
        start = time.monotonic()
        code = stop_server(serve)
        took = time.monotonic() - start
        cluster.stop()
    assert code == 0, log.read_text()[-4000:]
    assert took < 15, took

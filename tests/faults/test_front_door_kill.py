"""A front door SIGKILLed mid-stream: its generations stop, the model idles out on
time, and the other front door serves throughout.

Real processes: ``dask scheduler`` and one ``dask worker`` with the omax preloads,
two ``omax serve --scheduler`` front doors, SmolLM2 (long generations that would run
for minutes). Front door A starts four streams and is SIGKILLed once they are under
way; nothing tells the scheduler or the actor that those requests ended. The
actor's request leases (3 s here, ``omax.worker.request-lease``) cancel them, and
the scheduler, seeing no lease held on the actor, counts the model idle from then.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import pytest

from omax.sharding.bundled import smollm2_gguf_path
from tests.e2e.conftest import start_server, stop_server
from tests.plugins.dask_procs import start_scheduler, start_worker, stop, tail

pytestmark = [pytest.mark.cluster, pytest.mark.e2e, pytest.mark.slow]

MODEL = "smollm2:135m"
LEASE_S = 3
STOP_BOUND_S = 30  # the bound on orphaned generations
KEEP_ALIVE_S = 4


def _loaded(url: str) -> list[dict]:
    workers = httpx.get(url + "/api/cluster", timeout=10).json()["workers"]
    return [m for w in workers for m in w["loaded"]]


def _stream(url: str, started: threading.Event, seen: list) -> None:
    body = {
        "model": MODEL,
        "prompt": "Tell me a very long story about the sea.",
        "keep_alive": f"{KEEP_ALIVE_S}s",
        "options": {"num_predict": 4000, "temperature": 0.7, "seed": len(seen)},
    }
    try:
        with httpx.stream("POST", url + "/api/generate", json=body, timeout=300) as r:
            for line in r.iter_lines():
                seen.append(json.loads(line))
                started.set()
    except httpx.HTTPError:
        pass  # the front door was killed under it


def test_a_killed_front_door_leaves_no_generation_behind(tmp_path):
    from omax.sharding.modelstore import ModelStore

    ModelStore(str(tmp_path / "origin")).import_path(smollm2_gguf_path(), MODEL)
    env = {
        **os.environ,
        "DASK_OMAX__STORE__URL": str(tmp_path / "origin"),
        "DASK_OMAX__WORKER__STORE": str(tmp_path / "workers" / "{name}"),
        "DASK_OMAX__WORKER__REQUEST_LEASE": f"{LEASE_S}s",
    }
    sched, address = start_scheduler(env)
    worker = start_worker(address, env, "--no-nanny", "--name", "w1")
    a_proc, a_url, _ = start_server(tmp_path, "--scheduler", address, "--no-demo", env=env)
    b_proc, b_url, b_log = start_server(tmp_path, "--scheduler", address, "--no-demo", env=env)
    try:
        deadline = time.monotonic() + 60
        while httpx.get(b_url + "/api/health", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, tail(worker, sched)
            time.sleep(0.2)
        streams = []
        for _ in range(4):
            started, seen = threading.Event(), []
            t = threading.Thread(target=_stream, args=(a_url, started, seen), daemon=True)
            t.start()
            streams.append((started, seen))
        for started, _ in streams:
            assert started.wait(240), tail(worker)
        time.sleep(1.0)
        assert all("error" not in seen[0] for _, seen in streams), streams[0][1][:2]
        loaded = _loaded(b_url)
        assert loaded and loaded[0]["in_flight"] == 4, httpx.get(b_url + "/api/cluster").text

        os.killpg(a_proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        a_proc.wait(10)

        # The other front door serves meanwhile.
        r = httpx.post(
            b_url + "/api/chat",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": "Say hi"}],
                "stream": False,
                "keep_alive": f"{KEEP_ALIVE_S}s",
                "options": {"num_predict": 4, "temperature": 0},
            },
            timeout=120,
        )
        assert r.status_code == 200 and r.json()["done"], r.text

        # The orphans are cancelled by their leases...
        while sum("not polled" in line for line in worker.log) < 4:
            assert time.monotonic() - killed < STOP_BOUND_S, tail(worker)
            time.sleep(0.2)
        stopped = time.monotonic() - killed
        # ...and the model, idle from then, unloads keep_alive later (plus the lease
        # the scheduler waits before asking the actor, and its reaper's tick).
        while _loaded(b_url):
            assert time.monotonic() - killed < stopped + KEEP_ALIVE_S + LEASE_S + 10, (
                _loaded(b_url),
                tail(worker, sched),
            )
            time.sleep(0.2)
        unloaded = time.monotonic() - killed
        print(
            f"orphans cancelled {stopped:.1f} s after the kill, model unloaded at {unloaded:.1f} s"
        )
        assert all(len(seen) < 3000 for _, seen in streams)  # none ran to its end
    finally:
        if a_proc.poll() is None:  # the test failed before killing it
            stop_server(a_proc)
        stop_server(b_proc)
        stop(worker, sched)
    assert "Traceback" not in b_log.read_text()

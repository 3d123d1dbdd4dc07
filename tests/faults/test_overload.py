"""Ten times the queue limit at once: fast 503s, the admitted requests finish, and the
front door's memory stays bounded.

A real `omax serve` (embedded cluster, no demo model) with `omax.serve.max-queue` 8
and a tiny random llama, and 80 concurrent generate requests from 80 threads.
"""

from __future__ import annotations

import threading
import time

import httpx
import psutil
import pytest

from tests.e2e.conftest import start_server, stop_server
from tests.tiny import tiny_llama

pytestmark = [pytest.mark.cluster, pytest.mark.e2e, pytest.mark.slow]

QUEUE = 8
REFUSED_WITHIN_S = 5.0  # a 503 comes this fast however long the queue is busy
ADMITTED_WITHIN_S = 120.0


def test_ten_times_the_queue_limit(tmp_path):
    from omax.sharding.modelstore import ModelStore

    ModelStore(str(tmp_path / "origin")).import_path(tiny_llama(tmp_path / "tiny"), "tiny")
    proc, url, log = start_server(
        tmp_path, "--no-demo", env={"DASK_OMAX__SERVE__MAX_QUEUE": str(QUEUE)}
    )
    try:
        body = {
            "model": "tiny",
            "prompt": "hello " * 50,
            "raw": True,
            "stream": False,
            "options": {"num_predict": 400, "temperature": 0},
        }
        warm = httpx.post(
            url + "/api/generate", json={**body, "options": {"num_predict": 1}}, timeout=180
        )
        assert warm.status_code == 200, warm.text
        front_door = psutil.Process(proc.pid)
        rss_before = front_door.memory_info().rss

        results: list[tuple[int, float, dict]] = []
        lock = threading.Lock()
        go = threading.Event()

        # One client for all: a client per request would build an SSL context each,
        # and 80 of them at once cost this process seconds before a request leaves.
        client = httpx.Client(timeout=300, limits=httpx.Limits(max_connections=100))

        def one() -> None:
            go.wait()
            started = time.monotonic()
            r = client.post(url + "/api/generate", json=body)
            with lock:
                results.append((r.status_code, time.monotonic() - started, r.json()))

        threads = [threading.Thread(target=one) for _ in range(10 * QUEUE)]
        for t in threads:
            t.start()
        go.set()
        for t in threads:
            t.join(ADMITTED_WITHIN_S + 60)
        client.close()
        rss_after = front_door.memory_info().rss
    finally:
        code = stop_server(proc)
    assert code == 0, log.read_text()[-3000:]

    ok = [(took, r) for status, took, r in results if status == 200]
    busy = [(took, r) for status, took, r in results if status == 503]
    other = [(status, r) for status, _, r in results if status not in (200, 503)]
    print(f"{len(ok)} served, {len(busy)} refused in at most {max(t for t, _ in busy):.2f} s")
    assert len(results) == 10 * QUEUE and not other, other
    assert QUEUE <= len(ok) < 10 * QUEUE and len(ok) + len(busy) == 10 * QUEUE
    assert all(r["done"] and r["eval_count"] > 0 for _, r in ok)
    assert max(took for took, _ in ok) < ADMITTED_WITHIN_S
    assert all("server busy" in r["error"] for _, r in busy)
    assert max(took for took, _ in busy) < REFUSED_WITHIN_S
    assert rss_after - rss_before < 200 * 2**20  # a refused request costs no memory kept

"""SIGKILL of the worker serving a model under load (and `create` replicating).

Real processes: ``dask scheduler``, three ``dask worker`` with the omax preloads,
replication target 2, an ``omax serve --scheduler`` front door, SmolLM2 created from
an uploaded GGUF (which brings it to two complete replicas without a pull). Twenty
streams go to the model (sixteen decode at once, the rest wait in its queue); once
some are under way, the worker serving them is SIGKILLed. Streams that had a first
token end with an error line; the others complete on another replica; no request
waits past ``BOUND_S``; the model is back to two complete replicas.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time

import httpx
import pytest

from omax.sharding.bundled import smollm2_gguf_path
from tests.e2e.conftest import start_server, stop_server
from tests.plugins.dask_procs import start_scheduler, start_worker, stop, tail

pytestmark = [pytest.mark.cluster, pytest.mark.e2e, pytest.mark.slow]

MODEL = "smollm2:135m"
STREAMS = 20
BOUND_S = 240  # every request ends within this of the kill
REPLICAS_BACK_S = 180


def _cluster(url: str) -> dict:
    return httpx.get(url + "/api/cluster", timeout=10).json()


def _complete_replicas(url: str, digest: str) -> int:
    return sum(1 for w in _cluster(url)["workers"] if w["replicas"].get(digest, {}).get("complete"))


def _stream(url: str, i: int, lines: list) -> None:
    body = {
        "model": MODEL,
        "prompt": f"Count from {i} to {i + 500}, one number per line.",
        "options": {"num_predict": 200, "temperature": 0.5, "seed": i},
    }
    try:
        with httpx.stream("POST", url + "/api/generate", json=body, timeout=BOUND_S) as r:
            if r.status_code != 200:
                lines.append({"status": r.status_code, "error": r.read().decode()})
                return
            for line in r.iter_lines():
                lines.append({**json.loads(line), "at": time.monotonic()})
    except httpx.HTTPError as e:
        lines.append({"transport": repr(e), "at": time.monotonic()})


def test_sigkill_of_the_serving_worker_under_twenty_streams(tmp_path):
    import ollama

    env = {
        **os.environ,
        "DASK_OMAX__STORE__URL": str(tmp_path / "origin"),
        "DASK_OMAX__WORKER__STORE": str(tmp_path / "workers" / "{name}"),
        "DASK_OMAX__REPLICATION__TARGET": "2",
    }
    sched, address = start_scheduler(env)
    workers = {
        name: start_worker(address, env, "--no-nanny", "--name", name)
        for name in ("w1", "w2", "w3")
    }
    serve, url, log = start_server(tmp_path, "--scheduler", address, "--no-demo", env=env)
    try:
        deadline = time.monotonic() + 120
        while len(_cluster(url)["workers"]) < 3:
            assert time.monotonic() < deadline, tail(sched, *workers.values())
            time.sleep(0.2)
        # `create` brings the model to the replication target itself: no pull.
        client = ollama.Client(host=url, timeout=600)
        path = smollm2_gguf_path()
        assert client.create(model=MODEL, files={path.name: client.create_blob(path)}).status
        digest = next(m.digest for m in client.list().models if m.model == MODEL)
        digest = f"sha256:{digest}" if not digest.startswith("sha256:") else digest
        assert _complete_replicas(url, digest) == 2, _cluster(url)

        results: list[list] = [[] for _ in range(STREAMS)]
        threads = [
            threading.Thread(target=_stream, args=(url, i, results[i]), daemon=True)
            for i in range(STREAMS)
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 240
        while sum(1 for lines in results if lines) < 8:
            assert time.monotonic() < deadline, tail(sched, *workers.values())
            time.sleep(0.05)
        serving = {m["worker"] for w in _cluster(url)["workers"] for m in w["loaded"]}
        assert len(serving) == 1, serving
        victim = next(name for name, p in workers.items() if _worker_address(p) in serving)
        workers[victim].kill()
        killed = time.monotonic()
        for t in threads:
            t.join(BOUND_S)
        ended = time.monotonic() - killed

        with_token = [lines for lines in results if lines and lines[0].get("at", 1e18) < killed]
        without = [lines for lines in results if lines not in with_token]
        for lines in with_token:
            last = lines[-1]
            assert last.get("done") or last.get("error") or last.get("transport"), last
        for lines in without:
            assert lines and lines[-1].get("done") and not lines[-1].get("error"), lines[-3:]
        print(
            f"{len(with_token)} streams under way at the kill, "
            f"{sum(1 for ls in with_token if ls[-1].get('error'))} ended with an error line; "
            f"{len(without)} without a first token, all completed elsewhere; "
            f"every request ended {ended:.1f} s after the kill"
        )
        assert without, "every stream had a token before the kill: nothing was retried"
        assert ended < BOUND_S

        deadline = time.monotonic() + REPLICAS_BACK_S
        while _complete_replicas(url, digest) < 2:
            assert time.monotonic() < deadline, _cluster(url)
            time.sleep(0.5)
        print(f"two complete replicas again {time.monotonic() - killed:.1f} s after the kill")
    finally:
        stop_server(serve)
        stop(*workers.values(), sched)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def _worker_address(proc) -> str:
    """The address a ``dask worker`` process said it listens on."""
    for line in list(proc.log):
        m = re.search(r"Start worker at:\s+(tcp://\S+)", line)
        if m:
            return m.group(1)
    raise AssertionError("no worker address in its log:\n" + tail(proc))

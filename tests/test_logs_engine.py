"""On a worker, a model actor's lines about a request name it: the batching thread's
line about a sequence that fails names the request id, the model and the worker.

A real in-process ``LocalCluster`` runs a ``ModelActor`` over a tiny random llama
(SmolLM2's tokenizer); the test-only fault marker makes the engine's step fail."""

from __future__ import annotations

import json
import logging

import dask.config
from distributed import Client, LocalCluster

from omax.engine.actor import ModelActor
from omax.engine.fault_injection import FAULT_KEY
from omax.engine.request import GenerateRequest, SamplingOptions
from omax.logs import ContextFilter, JsonFormatter
from tests.engine.test_actor import tiny_source

MARKER = "explode-here"
DIGEST = "sha256:" + "ab" * 32


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.entries: list[dict] = []
        self.setFormatter(JsonFormatter())
        self.addFilter(ContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.entries.append(json.loads(self.format(record)))


def test_a_failing_sequence_is_logged_with_request_model_and_worker():
    records = Records()
    engine_log = logging.getLogger("omax.engine")
    engine_log.addHandler(records)
    try:
        with (
            dask.config.set({FAULT_KEY: MARKER}),
            LocalCluster(
                n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
            ) as cluster,
            Client(cluster) as client,
        ):
            worker = next(iter(client.scheduler_info()["workers"]))
            future = client.submit(
                ModelActor, DIGEST, load_source=tiny_source, actor=True, workers=[worker]
            )
            actor = future.result()
            actor.load().result()
            req = GenerateRequest(
                model="t",
                prompt=f"please {MARKER}",
                options=SamplingOptions(num_predict=3),
                request_id="req-42",
            )
            assert actor.submit(req).result() == "req-42"
            last = _poll_until_done(actor)
            assert last.done_reason == "error"
    finally:
        engine_log.removeHandler(records)
    failed = [e for e in records.entries if e["message"].startswith("request req-42 failed")]
    assert failed, records.entries
    assert failed[0]["request_id"] == "req-42"
    assert failed[0]["model"] == DIGEST[:19]
    assert failed[0]["worker"] == worker


def _poll_until_done(actor, attempts: int = 200):
    for _ in range(attempts):
        chunks = actor.poll(["req-42"], 0.1).result().get("req-42", [])
        if chunks and chunks[-1].done:
            return chunks[-1]
    raise AssertionError("the failing request never finished")

"""A batch step that fails answers every request it touched with an error; none hangs."""

from __future__ import annotations

import time

import pytest

from omax.engine.engine import Engine
from omax.engine.request import GenerateRequest, SamplingOptions

from .conftest import state_dict_raw


@pytest.mark.parametrize("quant", ["none", "bf16"])
def test_failing_prefill_step_errors_every_admitted_request(tiny_model_and_spec, quant):
    model, spec = tiny_model_and_spec
    eng = Engine.load(spec, state_dict_raw(model), max_batch=4, max_ctx=256, quant=quant)
    try:
        runner = eng.batcher.runner
        real_step = runner.step
        broken = {"on": True}

        def step(tokens, positions, segments=(), pinned=()):
            if segments and broken["on"]:
                raise RuntimeError("kernel exploded")
            return real_step(tokens, positions, segments, pinned)

        runner.step = step
        opts = SamplingOptions(temperature=0.0, num_predict=4)
        reqs = [GenerateRequest(model="t", prompt=f"hello {i}", options=opts) for i in range(3)]
        ids = [eng.submit(r) for r in reqs]  # short prompts: admitted whole, maybe together
        done = {}
        deadline = time.monotonic() + 30
        while len(done) < len(ids) and time.monotonic() < deadline:
            for rid, chunks in eng.poll([i for i in ids if i not in done], 1.0).items():
                if chunks and chunks[-1].done:
                    done[rid] = chunks[-1]
        assert set(done) == set(ids), "a request admitted by the failed step never finished"
        assert all(c.done_reason == "error" and "kernel exploded" in c.error for c in done.values())
        broken["on"] = False  # the loop survives and serves the next request
        rid = eng.submit(reqs[0])
        chunks = []
        while not (chunks and chunks[-1].done):
            chunks += eng.poll([rid], 5.0).get(rid, [])
        assert chunks[-1].done_reason == "length"
    finally:
        eng.close()

"""A batch step that fails answers every request it touched with an error (none hangs)
and kills the engine: it names the cause and answers every later request with it."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import dask.config
import pytest

from omax.engine.engine import Engine
from omax.engine.fault_injection import FAULT_KEY
from omax.engine.request import GenerateRequest, Message, SamplingOptions
from omax.errors import EngineDead

from .conftest import state_dict_raw

OPTS = SamplingOptions(temperature=0.0, num_predict=4)


def _finish(eng: Engine, ids: list[str], timeout: float = 30) -> dict:
    """The last chunk of each of ``ids``, waiting up to ``timeout`` s in all."""
    done = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(ids) and time.monotonic() < deadline:
        for rid, chunks in eng.poll([i for i in ids if i not in done], 1.0).items():
            if chunks and chunks[-1].done:
                done[rid] = chunks[-1]
    assert set(done) == set(ids), "a request never finished"
    return done


@pytest.mark.parametrize("quant", ["none", "bf16"])
def test_failing_prefill_step_errors_every_admitted_request_and_kills_the_engine(
    tiny_model_and_spec, quant
):
    model, spec = tiny_model_and_spec
    eng = Engine.load(spec, state_dict_raw(model), max_batch=4, max_ctx=256, quant=quant)
    try:
        runner = eng.batcher.runner
        real_step = runner.step
        all_in = threading.Event()

        def step(tokens, positions, segments=(), pinned=()):
            if segments:
                all_in.wait(30)  # every request is submitted before the engine dies
                raise RuntimeError("kernel exploded")
            return real_step(tokens, positions, segments, pinned)

        runner.step = step
        reqs = [GenerateRequest(model="t", prompt=f"hello {i}", options=OPTS) for i in range(3)]
        ids = [eng.submit(r) for r in reqs]  # short prompts: admitted whole, maybe together
        all_in.set()
        done = _finish(eng, ids)
        assert all(c.done_reason == "error" and "kernel exploded" in c.error for c in done.values())
        assert eng.batcher.dead == "engine step failed: kernel exploded"
        with pytest.raises(EngineDead, match="kernel exploded"):
            eng.submit(reqs[0])
        assert eng.stats()["live"] == 0
    finally:
        eng.close()


def test_requests_queued_while_or_after_the_engine_dies_are_answered(tiny_model_and_spec):
    """A request waiting in the inbox when the step fails, and one that passed the
    engine's liveness check just before it died, both get the error."""
    model, spec = tiny_model_and_spec
    eng = Engine.load(spec, state_dict_raw(model), max_batch=4, max_ctx=256)
    try:
        batcher = eng.batcher
        seen = []
        real_submit = batcher.submit

        def submit(seq):
            seen.append(seq)
            real_submit(seq)

        def step(*args, **kwargs):
            time.sleep(0.2)  # the next request arrives while this step runs
            raise RuntimeError("kernel exploded")

        batcher.submit = submit
        batcher.runner.step = step
        first = eng.submit(GenerateRequest(model="t", prompt="hello", options=OPTS))
        time.sleep(0.05)
        during = eng.submit(GenerateRequest(model="t", prompt="again", options=OPTS))
        errors = {c.error for c in _finish(eng, [first, during]).values()}
        assert errors == {"engine step failed: kernel exploded"}
        real_submit(replace(seen[0], rid="late"))  # as if it raced the failing step
        assert _finish(eng, ["late"])["late"].error == "engine step failed: kernel exploded"
    finally:
        eng.close()


def test_fault_injection_key_fails_only_the_steps_that_run_a_marked_request(
    tiny_model_and_spec,
):
    model, spec = tiny_model_and_spec
    with dask.config.set({FAULT_KEY: "BOOM"}):
        eng = Engine.load(spec, state_dict_raw(model), max_batch=4, max_ctx=256)
    try:
        plain = eng.submit(GenerateRequest(model="t", prompt="hello", options=OPTS))
        assert _finish(eng, [plain])[plain].done_reason == "length"
        chat = GenerateRequest(model="t", messages=(Message("user", "say BOOM"),), options=OPTS)
        marked = eng.submit(chat)
        last = _finish(eng, [marked])[marked]
        assert last.done_reason == "error" and FAULT_KEY in last.error
        assert eng.batcher.dead is not None and FAULT_KEY in eng.batcher.dead
    finally:
        eng.close()

"""Prompt-prefix reuse: the pure policy, and greedy output with and without a hit."""

from __future__ import annotations

import time

import torch

from omax.engine import batch_policy
from omax.engine.engine import Engine
from omax.engine.loader import LoadedModel, build_tokenizer
from omax.engine.prefix import Entry, Hit, PrefixCache, Store, common_prefix, match, plan_store
from omax.engine.request import GenerateRequest, Message, SamplingOptions

from .conftest import SMOLLM2_GGUF, gguf_tensors, state_dict_raw
from .test_generate import reference_tokens, run_all
from .test_speed import _fast_fp32

# ---- the pure policy ---------------------------------------------------------------


def test_common_prefix():
    assert common_prefix([1, 2, 3], (1, 2, 3, 4)) == 3
    assert common_prefix([1, 2, 3], [1, 9, 3]) == 1
    assert common_prefix([], [1]) == 0
    a = list(range(1000))
    for k in (0, 1, 499, 500, 999):
        b = a[:k] + [-1] + a[k + 1 :]
        assert common_prefix(a, b) == k


def test_match_longest_recent_and_never_the_last_token():
    e = [
        Entry(0, tuple(range(20)), used=1),
        Entry(1, tuple(range(30)) + (99,), used=2),
        Entry(2, tuple(range(30)), used=3),
    ]
    prompt = list(range(40))
    assert match(prompt, e, min_tokens=16) == Hit(2, 30)  # tie 30/30: most recent
    assert match(prompt, e, min_tokens=31) is None
    # the whole prompt is cached: its last token still runs
    assert match(list(range(30)), e, min_tokens=16) == Hit(2, 29)
    assert match([5, *range(40)], e, min_tokens=1) is None  # nothing in common
    assert match(prompt, [], min_tokens=1) is None


def test_plan_store():
    t = tuple(range(50))
    assert plan_store(t[:10], [], n_rows=2, min_tokens=16) is None
    assert plan_store(t, [], n_rows=0, min_tokens=16) is None
    assert plan_store(t, [], n_rows=2, min_tokens=16) == Store(0, 0)
    # contained in a row: refresh only
    e = [Entry(1, t + (7, 8), used=1)]
    assert plan_store(t, e, n_rows=2, min_tokens=16) == Store(1, 50, touch_only=True)
    # extends a row (a chat's previous turn): write only the new tail into that row
    e = [Entry(0, t[:20], used=5), Entry(1, t[:30], used=1)]
    assert plan_store(t, e, n_rows=2, min_tokens=16) == Store(1, 30)
    # shares only part of a row (another user, same system prompt): never clobbered
    # while a free row exists; otherwise the least recently used row goes
    other = t[:20] + (-1,) * 30
    e = [Entry(0, other, used=5)]
    assert plan_store(t, e, n_rows=2, min_tokens=16) == Store(1, 0)
    e = [Entry(0, other, used=5), Entry(1, (-2,) * 40, used=3)]
    assert plan_store(t, e, n_rows=2, min_tokens=16) == Store(1, 0)


def test_prefix_cache_bookkeeping():
    c = PrefixCache(2, min_tokens=4)
    t = list(range(10))
    plan = c.plan(t)
    assert plan == Store(0, 0)
    c.begin_write(plan.row)
    c.commit(plan.row, t)
    assert c.match(t + [42]) == Hit(0, 10) and c.tokens() == 10
    c.use(0)
    c.clear()
    assert c.match(t + [42]) is None


def test_batch_policy_starts_prefill_after_the_cached_prefix():
    w = [batch_policy.Waiting("a", 1000, 1100, cached=900)]
    d = batch_policy.schedule(w, None, [], max_slots=2, kv_budget=10_000, chunk=256)
    assert d.admit == ("a",) and d.prefill == (batch_policy.Chunk("a", 900, 100, False),)


# ---- the engine --------------------------------------------------------------------

GREEDY = SamplingOptions(temperature=0.0, num_predict=16)


def settled(eng: Engine) -> dict:
    """Stats once the loop has released every request (done is emitted just before)."""
    for _ in range(200):
        st = eng.stats()
        if st["live"] == 0 and st["kv_tokens"] == 0:
            return st
        time.sleep(0.01)
    return st


def _two_turns(eng: Engine, first: str, second: str) -> tuple[list[int], list[int], dict]:
    """Turn 1 (raw ``first``), then turn 2 resending turn 1's ``context`` + ``second``.

    Returns (turn-2 prompt ids, turn-2 generated ids, stats delta over turn 2 with the
    number of new prompt tokens as "new").
    """
    r1 = run_all(eng, [GenerateRequest(model="t", prompt=first, raw=True, options=GREEDY)])[0]
    ctx = r1["done"].context
    before = settled(eng)
    req = GenerateRequest(model="t", prompt=second, raw=True, context=ctx, options=GREEDY)
    r2 = run_all(eng, [req])[0]
    after = settled(eng)
    prompt = list(ctx) + eng.tokenizer.encode(second, add_special_tokens=False)
    delta = {k: after[k] - before[k] for k in ("prefilled_tokens", "reused_tokens")}
    delta["new"] = len(prompt) - len(ctx)
    assert r2["done"].metrics.prompt_eval_count == len(prompt)  # the whole prompt
    assert eng.batcher is not None
    assert (after["prefix_tokens"] > 0) == (eng.batcher.runner.prefix_rows > 0)
    return prompt, list(r2["done"].context[len(prompt) :]), delta


FIRST = "The quick brown fox jumps over the lazy dog. " * 8
SECOND = " And then the story continues with a second question:"


def test_tiny_llama_prefix_hit_is_token_identical(tiny_model_and_spec):
    model, spec = tiny_model_and_spec
    outs = []
    for rows in (4, 0):
        eng = Engine.load(spec, state_dict_raw(model), max_batch=2, max_ctx=256, prefix_rows=rows)
        try:
            outs.append(_two_turns(eng, FIRST, SECOND))
        finally:
            eng.close()
    (prompt, hit, d_hit), (prompt0, cold, d_cold) = outs
    assert prompt == prompt0 and hit == cold
    assert hit == reference_tokens(model, prompt, 16)[: len(hit)]
    # turn 2 reuses all of turn 1 (prompt + reply; the reply's last token was sampled,
    # never run) and runs only the new suffix
    assert d_hit["prefilled_tokens"] <= d_hit["new"] + 1
    assert d_hit["reused_tokens"] + d_hit["prefilled_tokens"] == len(prompt)
    assert d_cold["prefilled_tokens"] == len(prompt) and d_cold["reused_tokens"] == 0


def test_fast_runner_prefix_hit_is_token_identical(tiny_model_and_spec):
    model, spec = tiny_model_and_spec
    fast = _fast_fp32(model, spec)
    outs = []
    for rows in (4, 0):
        loaded = LoadedModel(
            model=fast,
            tokenizer=build_tokenizer(spec),
            spec=spec,
            load_duration_ns=0,
            device=torch.device("cpu"),
            dtype=torch.float32,
        )
        eng = Engine(loaded, max_batch=2, max_ctx=256, prefix_rows=rows)
        try:
            outs.append(_two_turns(eng, FIRST, SECOND))
        finally:
            eng.close()
    (_, hit, d_hit), (_, cold, _) = outs
    assert hit == cold and d_hit["reused_tokens"] > 0


def test_long_chat_second_turn_prefills_only_the_new_turn(tiny_model_and_spec):
    """A chat resending its history: turn 2 runs the new messages, not the history."""
    model, spec = tiny_model_and_spec
    eng = Engine.load(spec, state_dict_raw(model), max_batch=2, max_ctx=512, prefill_chunk=64)
    try:
        history = [Message(role="user", content="Tell me about foxes. " * 40)]
        opts = SamplingOptions(temperature=0.0, num_predict=8)
        r1 = run_all(eng, [GenerateRequest(model="t", messages=tuple(history), options=opts)])[0]
        turn1 = r1["done"].metrics.prompt_eval_count
        history += [
            Message(role="assistant", content=r1["text"]),
            Message(role="user", content="And wolves?"),
        ]
        before = settled(eng)
        r2 = run_all(eng, [GenerateRequest(model="t", messages=tuple(history), options=opts)])[0]
        after = settled(eng)
        turn2 = r2["done"].metrics.prompt_eval_count
        prefilled = after["prefilled_tokens"] - before["prefilled_tokens"]
        assert turn1 >= 200 and turn2 > turn1
        # everything up to the (re-tokenised) reply comes from the cache
        assert after["reused_tokens"] - before["reused_tokens"] >= turn1
        assert prefilled <= turn2 - turn1
        # what OpenAI's usage.prompt_tokens_details.cached_tokens reports
        assert r1["done"].metrics.cached_tokens == 0
        assert r2["done"].metrics.cached_tokens == turn2 - prefilled
    finally:
        eng.close()


def test_prefix_rows_are_reused_under_concurrency(tiny_model_and_spec):
    """Many requests sharing prefixes, some cancelled: all end, live KV drains to 0."""
    model, spec = tiny_model_and_spec
    eng = Engine.load(spec, state_dict_raw(model), max_batch=3, max_ctx=256, prefix_rows=2)
    try:
        reqs = [
            GenerateRequest(
                model="t",
                prompt="shared system text " * 6 + f"question {i}",
                raw=True,
                options=SamplingOptions(temperature=0.0, num_predict=4 + i % 5),
            )
            for i in range(12)
        ]
        ids = [eng.submit(r) for r in reqs]
        for rid in ids[1::4]:
            eng.cancel(rid)
        pending, reasons = set(ids), {}
        while pending:
            for rid, chunks in eng.poll(list(pending), timeout=5.0).items():
                if chunks[-1].done:
                    reasons[rid] = chunks[-1].done_reason
                    pending.discard(rid)
        assert set(reasons.values()) <= {"stop", "length", "cancel"}
        st = settled(eng)
        assert st["live"] == 0 and st["kv_tokens"] == 0 and st["kv_bytes"] == 0
        assert st["reused_tokens"] > 0 and 0 < st["prefix_tokens"] <= 2 * 256
        # a request alone after all that gives the same tokens as on a cold engine
        alone = run_all(eng, [reqs[0]])[0]["text"]
        cold = Engine.load(spec, state_dict_raw(model), max_batch=1, max_ctx=256, prefix_rows=0)
        try:
            assert run_all(cold, [reqs[0]])[0]["text"] == alone
        finally:
            cold.close()
    finally:
        eng.close()


def test_smollm2_chat_turn_two_reuses_and_matches_generate(smollm2_engine, smollm2_transformers):
    eng = smollm2_engine
    opts = SamplingOptions(temperature=0.0, num_predict=24)
    history = [Message(role="user", content="Name three colours of the rainbow.")]
    r1 = run_all(eng, [GenerateRequest(model="s", messages=tuple(history), options=opts)])[0]
    history += [
        Message(role="assistant", content=r1["text"]),
        Message(role="user", content="Which one is your favourite, and why?"),
    ]
    req = GenerateRequest(model="s", messages=tuple(history), options=opts)
    before = settled(eng)
    r2 = run_all(eng, [req])[0]
    after = settled(eng)
    prompt, _ = eng.encode_prompt(req)
    ref = reference_tokens(smollm2_transformers, prompt, 24)
    eos = eng.loaded.eos_token_ids
    ref = ref[: next((i for i, t in enumerate(ref) if t in eos), len(ref))]
    assert r2["text"] == eng.tokenizer.decode(ref, skip_special_tokens=False)
    reused = after["reused_tokens"] - before["reused_tokens"]
    prefilled = after["prefilled_tokens"] - before["prefilled_tokens"]
    assert reused >= r1["done"].metrics.prompt_eval_count
    assert reused + prefilled == len(prompt) == r2["done"].metrics.prompt_eval_count


def test_auto_reuses_prefixes_only_where_it_is_exact(tiny_model_and_spec, smollm2_spec):
    """Default (auto): on for the exact fp32 path, off for bf16 activations, where a
    prompt prefilled in two parts can flip a near-tie, so the same temperature-0
    request asked twice would answer differently (SmolLM2 int4 did, on 'What is the
    capital of France?')."""
    model, spec = tiny_model_and_spec
    exact = Engine.load(spec, state_dict_raw(model), max_batch=2, max_ctx=256)
    fast = Engine.load(smollm2_spec, gguf_tensors(SMOLLM2_GGUF), quant="int4", max_ctx=256)
    try:
        assert exact.batcher.runner.prefix_rows > 0
        assert fast.batcher.runner.prefix_rows == 0
        req = GenerateRequest(
            model="m",
            messages=(Message("user", "What is the capital of France?"),),
            options=SamplingOptions(temperature=0, num_predict=12),
        )
        first, again = ("".join(c.text for c in fast.generate(req)) for _ in range(2))
        assert first == again
    finally:
        exact.close()
        fast.close()

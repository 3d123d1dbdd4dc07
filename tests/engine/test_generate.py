"""Greedy output equals transformers' ``generate``; batching and seeds are consistent."""

from __future__ import annotations

import pytest
import torch

from omax.engine.engine import Engine
from omax.engine.request import GenerateRequest, SamplingOptions

from .conftest import SMOLLM2_GGUF, gguf_tensors, state_dict_raw

GREEDY = SamplingOptions(temperature=0.0, num_predict=32)


def run_all(engine: Engine, reqs: list[GenerateRequest]) -> dict[str, dict]:
    ids = [engine.submit(r) for r in reqs]
    out = {i: {"text": "", "done": None} for i in ids}
    pending = set(ids)
    while pending:
        for rid, chunks in engine.poll(list(pending), timeout=5.0).items():
            for c in chunks:
                out[rid]["text"] += c.text
                if c.done:
                    out[rid]["done"] = c
                    pending.discard(rid)
    return [out[i] for i in ids]


def reference_tokens(model, prompt_ids: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, len(prompt_ids) :].tolist()


def test_tiny_llama_greedy_matches_generate(tiny_model_and_spec):
    model, spec = tiny_model_and_spec
    eng = Engine.load(spec, state_dict_raw(model), max_batch=4, max_ctx=256)
    try:
        prompts = ["Hello there", "The quick brown fox jumps over", "1 2 3"]
        reqs = [
            GenerateRequest(
                model="t",
                prompt=p,
                raw=True,
                options=SamplingOptions(temperature=0.0, num_predict=24),
            )
            for p in prompts
        ]
        results = run_all(eng, reqs)  # batched together
        for p, res in zip(prompts, results, strict=True):
            ids = eng.tokenizer.encode(p, add_special_tokens=False)
            ref = reference_tokens(model, ids, 24)
            got = list(res["done"].context[len(ids) :])
            assert got == ref[: len(got)]
            assert len(got) == 24 or res["done"].done_reason == "stop"
    finally:
        eng.close()


def test_smollm2_greedy_matches_generate(smollm2_engine, smollm2_transformers):
    eng = smollm2_engine
    model = smollm2_transformers
    prompts = ["The capital of France is", "Write a haiku about the sea.", "def fibonacci(n):"]
    reqs = [
        GenerateRequest(
            model="s", prompt=p, raw=True, options=SamplingOptions(temperature=0.0, num_predict=32)
        )
        for p in prompts
    ]
    results = run_all(eng, reqs)
    for p, res in zip(prompts, results, strict=True):
        ids = eng.tokenizer.encode(p, add_special_tokens=False)
        ref = reference_tokens(model, ids, 32)
        got = list(res["done"].context[len(ids) :])
        assert got == ref[: len(got)], p
        m = res["done"].metrics
        assert m.prompt_eval_count == len(ids) and m.eval_count in (len(got), len(got) + 1)
        assert m.prompt_eval_duration > 0 and m.eval_duration > 0


def test_seeded_same_alone_and_batched(smollm2_engine):
    eng = smollm2_engine
    opts = SamplingOptions(
        temperature=0.9, seed=42, num_predict=16, top_k=40, top_p=0.9, repeat_penalty=1.1
    )
    target = GenerateRequest(model="s", prompt="Tell me a story about a dragon.", options=opts)
    alone = run_all(eng, [target])[0]["text"]
    others = [
        GenerateRequest(
            model="s", prompt=f"Count to {i}.", options=SamplingOptions(seed=i, num_predict=8 + i)
        )
        for i in range(15)
    ]
    batched = run_all(eng, [*others[:7], target, *others[7:]])
    assert batched[7]["text"] == alone
    assert alone


@pytest.mark.parametrize("quant", ["int4", "bf16"])
def test_seeded_same_alone_and_batched_on_the_fast_path(smollm2_spec, smollm2_int4_engine, quant):
    """The server's default (int4) and dense bf16: seeded requests, one with a prompt
    long enough to be prefilled over several steps, give the same text alone and in a
    batch of 16 beside unseeded requests of other lengths that come and go."""
    eng = smollm2_int4_engine
    if quant != "int4":
        eng = Engine.load(smollm2_spec, gguf_tensors(SMOLLM2_GGUF), quant=quant, max_ctx=2048)
    try:
        check_seeded_alone_and_batched(eng)
    finally:
        if eng is not smollm2_int4_engine:
            eng.close()


def check_seeded_alone_and_batched(eng: Engine) -> None:
    """Four seeded requests (one prefilled in chunks) give the same text alone and in
    a batch of 16 with twelve unseeded ones of other lengths."""

    def req(i: int, seed: int) -> GenerateRequest:
        story = f" Remember forest {i}, its river and the old mill." * (40 if i == 0 else i % 3)
        opts = SamplingOptions(
            temperature=0.8, seed=seed, num_predict=12 + 2 * i, top_p=0.9, repeat_penalty=1.1
        )
        return GenerateRequest(model="s", prompt=f"Tell me about animal {i}.{story}", options=opts)

    seeded = [req(i, 1000 + i) for i in range(4)]
    others = [req(100 + i, -1) for i in range(12)]
    batch = [*others[:3], seeded[0], *others[3:6], seeded[1], seeded[2], *others[6:], seeded[3]]
    assert len(eng.encode_prompt(seeded[0])[0]) > 300  # prefilled in chunks of 256
    got = {id(r): out["text"] for r, out in zip(batch, run_all(eng, batch), strict=True)}
    for r in seeded:
        assert run_all(eng, [r])[0]["text"] == got[id(r)], r.prompt[:30]
        assert got[id(r)]


def test_stop_strings_never_emitted(smollm2_engine):
    eng = smollm2_engine
    base = GenerateRequest(
        model="s",
        prompt="List the numbers from 1 to 20, comma separated.",
        options=SamplingOptions(temperature=0.0, num_predict=60),
    )
    full = run_all(eng, [base])[0]["text"]
    # choose a stop string spanning a token boundary inside the output
    stop = full[10:16]
    req = GenerateRequest(
        model="s",
        prompt=base.prompt,
        options=SamplingOptions(temperature=0.0, num_predict=60, stop=(stop,)),
    )
    res = run_all(eng, [req])[0]
    assert stop not in res["text"]
    assert res["text"] == full[: full.index(stop)]
    assert res["done"].done_reason == "stop"


def test_out_of_vocabulary_context_is_refused_and_the_engine_keeps_serving(smollm2_engine):
    from omax.errors import InvalidRequest

    bad = GenerateRequest(model="s", prompt="hi", context=(1, 49152 + 7), options=GREEDY)
    with pytest.raises(InvalidRequest, match="outside the model's vocabulary"):
        smollm2_engine.submit(bad)
    ok = run_all(smollm2_engine, [GenerateRequest(model="s", prompt="Hi", options=GREEDY)])[0]
    assert ok["done"].done_reason in ("stop", "length") and ok["text"]

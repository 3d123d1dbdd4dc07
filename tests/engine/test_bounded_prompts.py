"""Untrusted templates and oversized prompts cost bounded work.

The sandbox cases run with no model; the engine cases use the session's SmolLM2
engine and show that a bad template or a 30 MB prompt neither hangs nor hurts the
requests after it.
"""

from __future__ import annotations

import time

import pytest

from omax.engine import templates
from omax.engine.request import GenerateRequest, Message, SamplingOptions
from omax.engine.spec import ModelSpec
from omax.engine.truncation import fit_messages, tail, truncate_ids
from omax.errors import InvalidRequest

from .test_generate import run_all

SPEC = ModelSpec(config={"model_type": "llama"}, tokenizer_json="", tokenizer_config={})

HOSTILE = {
    "nested loops": "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
    # loops that call nothing per item: only the loop's own clock checks stop them
    "loops over a kept range": (
        "{% set r = range(99999) %}{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}"
    ),
    "loops over a long string": (
        "{% set s = 'x' * 4000000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}"
    ),
    "recursive loop": ("{% for i in range(99999) recursive %}{{ loop(range(99999)) }}{% endfor %}"),
    "string repeat": "{{ 'x' * 10000000000 }}",
    "huge power": "{{ 2 ** 100000000 }}",
    "filter width": "{{ 'x'|center(10000000000) }}",
    "method width": "{{ 'x'.ljust(10000000000) }}",
    "printf width": "{{ '%10000000000s' % 'x' }}",
    "format width": "{{ '{:>10000000000}'.format('x') }}",
    "output size": "{% for i in range(99999) %}{{ 'y' * 999 }}{% endfor %}",
    "doubling": (
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}"
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}"
    ),
    "recursion": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "syntax": "{% for %}",
    "attribute escape": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
}


@pytest.mark.parametrize("template", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_template_is_an_invalid_request_within_seconds(template):
    started = time.monotonic()
    with pytest.raises(InvalidRequest):
        templates.render(GenerateRequest(model="m", prompt="hi", template=template), SPEC)
    assert time.monotonic() - started < 10  # 2 s limit; wide margin for a busy machine


def test_ordinary_templates_render():
    jinja = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] | trim }}{% endfor %}"
    req = GenerateRequest(model="m", prompt=" hi ", system="sys", template=jinja)
    assert templates.render(req, SPEC)[0] == "[system]sys[user]hi"
    go = GenerateRequest(model="m", prompt="hi", template="{{ .System }}|{{ .Prompt }}")
    assert templates.render(go, SPEC)[0] == "|hi"


def test_chat_truncation_drops_the_oldest_messages_and_keeps_system_and_last():
    messages = [{"role": "system", "content": "S" * 10}] + [
        {"role": "user", "content": f"{i:04d}" * 5} for i in range(100)
    ]
    kept = fit_messages(messages, 10 + 3 * 20)
    assert [m["content"][:4] for m in kept] == ["SSSS", "0097", "0098", "0099"]
    alone = fit_messages([{"role": "user", "content": "abcdef"}], 4)
    assert alone == [{"role": "user", "content": "cdef"}]
    assert tail("abcdef", 2) == "ef" and tail("ab", 5) == "ab"


def test_token_truncation_keeps_the_head_it_is_told_to_and_the_newest_rest():
    ids = list(range(100))
    out = truncate_ids(ids, keep=5, num_ctx=40, num_predict=10)
    assert out[:5] == [0, 1, 2, 3, 4] and out[-1] == 99 and len(out) == 30


# ---- through the engine ------------------------------------------------------------

GREEDY = SamplingOptions(temperature=0.0, num_predict=4, num_ctx=256)


def test_a_looping_request_template_fails_alone(smollm2_engine):
    bad = GenerateRequest(model="s", prompt="hi", template=HOSTILE["nested loops"], options=GREEDY)
    with pytest.raises(InvalidRequest, match="longer than"):
        smollm2_engine.submit(bad)
    ok = run_all(smollm2_engine, [GenerateRequest(model="s", prompt="Hi", options=GREEDY)])[0]
    assert ok["text"] and ok["done"].done_reason in ("stop", "length")


def test_a_30_mb_prompt_is_truncated_to_the_context_without_tokenising_it_all(smollm2_engine):
    prompt = "The quick brown fox jumps over the lazy dog. " * 700_000  # ~31 MB
    started = time.monotonic()
    res = run_all(smollm2_engine, [GenerateRequest(model="s", prompt=prompt, options=GREEDY)])[0]
    elapsed = time.monotonic() - started
    metrics = res["done"].metrics
    assert 0 < metrics.prompt_eval_count <= 256
    assert res["done"].done_reason in ("stop", "length")
    assert elapsed < 30  # tokenising all of it takes minutes on this machine


def test_a_long_chat_keeps_its_system_prompt_and_newest_turns(smollm2_engine):
    turns = tuple(
        Message(role="user" if i % 2 == 0 else "assistant", content=f"turn {i} " + "word " * 50)
        for i in range(2001)
    )
    req = GenerateRequest(
        model="s",
        messages=(Message(role="system", content="You are Zed."), *turns),
        options=GREEDY,
    )
    ids, keep = smollm2_engine.encode_prompt(req, num_ctx=256)
    text = smollm2_engine.tokenizer.decode(ids)
    assert "You are Zed." in text and "turn 2000" in text and "turn 0 " not in text
    assert keep > 0  # the system prompt survives token truncation too

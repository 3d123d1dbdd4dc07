"""Pure pieces: stop matching, detokenising, scheduling, templates, tool-call parsing."""

from __future__ import annotations

from omax.engine import batch_policy
from omax.engine.detokenizer import Detokenizer
from omax.engine.request import GenerateRequest, Message
from omax.engine.spec import ModelSpec
from omax.engine.stops import StopMatcher
from omax.engine.templates import render
from omax.engine.toolcalls import parse_tool_calls


def test_stop_split_across_pieces():
    m = StopMatcher(["</end>"])
    out = "".join(m.push(p) for p in ["Hello </", "e", "nd> world"])
    assert out == "Hello " and m.stopped


def test_stop_prefix_released_at_end():
    m = StopMatcher(["STOP"])
    out = m.push("abc ST") + m.push("x") + m.flush()
    assert out == "abc STx" and not m.stopped


def test_detokenizer_multibyte():
    data = "héllo ✓".encode()
    # one byte per "token"
    dec = Detokenizer(lambda ids: bytes(ids).decode("utf-8", errors="replace"))
    out = "".join(dec.push(b) for b in data) + dec.flush()
    assert out == "héllo ✓"


def test_batch_policy_fifo_and_budget():
    w = [batch_policy.Waiting("a", 100, 200), batch_policy.Waiting("b", 10, 20)]
    d = batch_policy.schedule(w, None, [], max_slots=2, kv_budget=150, chunk=64)
    # "a" is longer than a step's 64 tokens: staged; "b" would exceed the KV budget.
    assert d.admit == ("a",) and d.prefill == (batch_policy.Chunk("a", 0, 64, True),)
    assert not d.decode
    full = [batch_policy.Decoding("x", 100)]
    d = batch_policy.schedule(w, None, full, max_slots=2, kv_budget=150, chunk=64)
    assert d.admit == () and d.prefill == () and d.decode
    d = batch_policy.schedule(w, None, full * 2, max_slots=2, kv_budget=10_000, chunk=64)
    assert d.admit == ()


def test_batch_policy_admits_many_short_prompts_in_one_step():
    w = [batch_policy.Waiting(str(i), 7, 71) for i in range(20)]
    d = batch_policy.schedule(w, None, [], max_slots=16, kv_budget=10_000, chunk=256)
    assert d.admit == tuple(str(i) for i in range(16))  # one per free decode slot
    assert d.prefill == tuple(batch_policy.Chunk(str(i), 0, 7, False) for i in range(16))
    # The step's prompt tokens bound it too: 256 // 7 = 36 prompts, 2 slots left here.
    dec = [batch_policy.Decoding("x", 10)] * 14
    d = batch_policy.schedule(w, None, dec, max_slots=16, kv_budget=10_000, chunk=256)
    assert d.admit == ("0", "1") and d.decode
    # The third does not fit the 6 tokens left: it waits whole for the next step
    # (never split where its neighbours would decide).
    d = batch_policy.schedule(w, None, [], max_slots=64, kv_budget=10_000, chunk=20)
    assert d.admit == ("0", "1") and sum(c.n for c in d.prefill) == 14


def test_batch_policy_short_prompts_fill_the_step_beside_a_staged_one():
    pre = batch_policy.Prefilling("long", 256, 300, 400)  # 44 tokens left
    w = [
        batch_policy.Waiting("a", 100, 120),
        batch_policy.Waiting("b", 300, 400),  # longer than what is left: waits (FIFO)
        batch_policy.Waiting("c", 5, 10),
    ]
    d = batch_policy.schedule(w, pre, [], max_slots=8, kv_budget=10_000, chunk=256)
    assert d.prefill[0] == batch_policy.Chunk("long", 256, 44, True)
    assert d.admit == ("a",) and d.prefill[1:] == (batch_policy.Chunk("a", 0, 100, False),)
    # With the staging slot free, a long prompt takes it with what the step has left.
    d = batch_policy.schedule(w[1:], None, [], max_slots=8, kv_budget=10_000, chunk=256)
    assert d.admit == ("b",) and d.prefill == (batch_policy.Chunk("b", 0, 256, True),)
    # Behind a short one, a long prompt waits for a whole step: its chunks always start
    # at multiples of ``chunk``, whoever else is scheduled.
    d = batch_policy.schedule(w, None, [], max_slots=8, kv_budget=10_000, chunk=256)
    assert d.admit == ("a",) and d.prefill == (batch_policy.Chunk("a", 0, 100, False),)


def test_render_system_and_go_template():
    spec = ModelSpec(
        config={},
        tokenizer_json="",
        system="be brief",
        tokenizer_config={
            "chat_template": "{% for m in messages %}[{{ m['role'] }}]"
            "{{ m['content'] }}{% endfor %}"
        },
    )
    text, prefix = render(GenerateRequest(model="x", prompt="hi"), spec)
    assert text == "[system]be brief[user]hi" and prefix == "[system]be brief"
    text, _ = render(
        GenerateRequest(
            model="x",
            prompt="hi",
            template="{{ if .System }}S:{{ .System }} {{ end }}U:{{ .Prompt }}",
        ),
        spec,
    )
    assert text == "S:be brief U:hi"
    text, _ = render(GenerateRequest(model="x", prompt="raw!", raw=True), spec)
    assert text == "raw!"
    msgs = (Message(role="user", content="q"),)
    text, _ = render(GenerateRequest(model="x", messages=msgs, system="sys"), spec)
    assert text == "[system]sys[user]q"


def test_parse_tool_calls():
    content, calls = parse_tool_calls('<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>')
    assert content == "" and calls[0].name == "f" and calls[0].arguments == {"x": 1}
    _, calls = parse_tool_calls('{"name": "g", "arguments": "{\\"y\\": 2}"}')
    assert calls[0].arguments == {"y": 2}
    assert parse_tool_calls("plain text") == ("plain text", ())


def test_refine_top_breaks_bf16_ties_by_the_fp32_logits():
    """Two vocabulary rows whose bf16 logits tie at 25.25 differ in fp32: the refined
    logits rank them by their fp32 values; the rest are left as they were."""
    import torch

    from omax.engine.linear import refine_top

    x = torch.ones(1, 4, dtype=torch.bfloat16)
    dense = torch.tensor(
        [[1.0, 1.0, 1.0, 1.0], [6.3125] * 4, [6.3125, 6.3125, 6.3125, 6.34375], [6.28125] * 4]
    ).bfloat16()
    bf16 = torch.nn.functional.linear(x, dense).float()
    assert bf16[0, 1] == bf16[0, 2] == 25.25  # a tie: argmax would take the first
    refined = refine_top(bf16.clone(), x, dense)
    assert int(bf16.argmax()) == 1  # the first of the tie
    assert refined[0, 2] == 25.28125 and refined[0, 1] == 25.25
    assert int(refined.argmax()) == 2

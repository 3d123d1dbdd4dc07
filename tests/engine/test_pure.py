"""Pure pieces: stop matching, detokenising, scheduling, templates, tool-call parsing."""

from __future__ import annotations

from omax.engine import scheduler
from omax.engine.request import GenerateRequest, Message
from omax.engine.spec import ModelSpec
from omax.engine.stops import Detokenizer, StopMatcher
from omax.engine.templates import parse_tool_calls, render


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


def test_scheduler_fifo_and_budget():
    w = [scheduler.Waiting("a", 100, 200), scheduler.Waiting("b", 10, 20)]
    d = scheduler.schedule(w, None, [], max_slots=2, kv_budget=150, chunk=64)
    assert d.admit == "a" and d.prefill == ("a", 0, 64) and not d.decode
    full = [scheduler.Decoding("x", 100)]
    d = scheduler.schedule(w, None, full, max_slots=2, kv_budget=150, chunk=64)
    assert d.admit is None and d.prefill is None and d.decode
    d = scheduler.schedule(w, None, full * 2, max_slots=2, kv_budget=10_000, chunk=64)
    assert d.admit is None


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

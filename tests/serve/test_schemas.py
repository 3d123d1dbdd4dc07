"""Pure parsing and conversion: keep_alive, format, options, the OpenAI mapping."""

from __future__ import annotations

import logging

import pytest

from omax.errors import InvalidRequest
from omax.serve import convert
from omax.serve.schemas import (
    ChatBody,
    GenerateBody,
    OpenAIChatBody,
    Options,
    parse_body,
    parse_format,
    parse_keep_alive,
)


@pytest.mark.parametrize(
    "value,seconds",
    [
        (None, None),
        (0, 0.0),
        (30, 30.0),
        (2.5, 2.5),
        (-1, -1.0),
        (-0.5, -1.0),
        ("0", 0.0),
        ("-1", -1.0),
        ("45", 45.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        ("-5m", -1.0),
        ("10s", 10.0),
    ],
)
def test_keep_alive(value, seconds):
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize(
    "value", ["", "5x", "m5", "5m junk", "forever", True, [1], {"a": 1}, "1h-5m"]
)
def test_keep_alive_invalid(value):
    with pytest.raises(InvalidRequest, match="keep_alive"):
        parse_keep_alive(value)


def test_format():
    assert parse_format(None) is None and parse_format("") is None
    assert parse_format("json") == "json"
    assert parse_format({"type": "object"}) == {"type": "object"}
    for bad in ("xml", 1, ["json"], True):
        with pytest.raises(InvalidRequest, match="format"):
            parse_format(bad)


def test_unknown_options_warn_and_are_dropped(caplog):
    opts = Options.model_validate_json('{"temperature": 1, "mirostat": 2, "stop": ["a"]}')
    with caplog.at_level(logging.WARNING):
        sampling = convert.sampling(opts)
    assert "mirostat" in caplog.text
    assert sampling.temperature == 1.0 and sampling.stop == ("a",)
    assert sampling.top_k == 40  # Ollama's default where unset


def test_messages_name_the_field():
    with pytest.raises(InvalidRequest, match=r"'options.top_k'"):
        parse_body(GenerateBody, b'{"model": "m", "options": {"top_k": "x"}}')
    with pytest.raises(InvalidRequest, match=r"messages.0.role is required"):
        parse_body(ChatBody, b'{"model": "m", "messages": [{"content": "x"}]}')


def test_generate_conversion():
    body = parse_body(
        GenerateBody,
        b'{"model": "m", "prompt": "p", "context": [1, 2], "keep_alive": "1m", "think": "low"}',
    )
    req = convert.from_generate(body)
    assert (
        req.prompt == "p"
        and req.context == (1, 2)
        and req.keep_alive == 60.0
        and req.think == "low"
    )
    assert req.request_id


def test_chat_conversion_keeps_tool_call_objects():
    body = parse_body(
        ChatBody,
        b'{"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]},'
        b' {"role": "tool", "content": "2", "tool_name": "f"}]}',
    )
    req = convert.from_chat(body)
    assert req.messages[0].tool_calls[0].arguments == {"x": 1}
    assert req.messages[1].tool_name == "f"


def test_openai_mapping():
    body = parse_body(
        OpenAIChatBody,
        b'{"model": "m", "max_tokens": 7, "stop": "END", "reasoning_effort": "high", "messages": [{"role": "user", "content":'
        b' [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}]}]}',
    )
    req = convert.from_openai_chat(body)
    assert req.options.num_predict == 7 and req.options.stop == ("END",)
    assert req.options.temperature == 1.0 and req.options.top_p == 1.0
    assert req.think == "high"
    assert req.messages[0].content == "look" and req.messages[0].images == ("aGk=",)
    bad = parse_body(
        OpenAIChatBody,
        b'{"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{nope"}}]}]}',
    )
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        convert.from_openai_chat(bad)

"""Tool calls: text streams until a possible call starts; the last chunk carries the calls."""

from __future__ import annotations

from omax.engine.request import GenerateRequest, Message, SamplingOptions, ToolCall
from omax.engine.toolcalls import ToolCallStream

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
# SmolLM2's own template has no tools; this Hermes-style override renders them.
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nYou may call these functions: {{ tools | tojson }}\n"
    'To call one, answer <tool_call>{"name": ..., "arguments": {...}}</tool_call>'
    "<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def feed(pieces: list[str]) -> tuple[list[str], str, tuple[ToolCall, ...]]:
    s = ToolCallStream()
    shown = [s.push(p) for p in pieces]
    rest, calls = s.finish()
    return shown, rest, calls


# ---- the state machine (pure) ------------------------------------------------------
def test_plain_text_streams_as_it_comes():
    shown, rest, calls = feed(["Hello", " there", ", how", " are you?"])
    assert shown == ["Hello", " there", ", how", " are you?"]
    assert (rest, calls) == ("", ())


def test_text_then_tagged_call_split_across_pieces():
    pieces = ["Let me check.", " <tool", '_call>{"name": "get_weather", ', '"arguments": {"city"']
    pieces += [': "Paris"}}</tool_', "call>"]
    shown, rest, calls = feed(pieces)
    assert "".join(shown) == "Let me check. "
    assert shown[1] == " "  # "<tool" is held, the space before it is not
    assert rest == ""
    assert calls == (ToolCall(name="get_weather", arguments={"city": "Paris"}),)


def test_angle_bracket_that_is_not_an_opener_is_released():
    shown, rest, calls = feed(["a <", "b> c <to", "day"])
    assert shown == ["a ", "<b> c ", "<today"]
    assert (rest, calls) == ("", ())


def test_leading_json_is_buffered_and_parsed():
    shown, rest, calls = feed(["\n", '{"name": "f", ', '"arguments": {"x": 1}}'])
    assert shown == ["", "", ""]
    assert rest == ""
    assert calls == (ToolCall(name="f", arguments={"x": 1}),)


def test_leading_whitespace_then_text_is_released():
    shown, rest, _ = feed(["\n ", "Sure", " {not json}"])
    assert "".join(shown) == "\n Sure {not json}"
    assert rest == ""


def test_json_that_is_not_a_call_comes_back_as_content():
    shown, rest, calls = feed(['{"answer": ', "42}"])
    assert shown == ["", ""]
    assert (rest, calls) == ('{"answer": 42}', ())


def test_broken_tagged_call_comes_back_as_content():
    shown, rest, calls = feed(["ok ", "<tool_call>{oops"])
    assert shown == ["ok ", ""]
    assert (rest, calls) == ("<tool_call>{oops", ())


def test_several_tagged_calls():
    text = (
        '<tool_call>{"name": "a", "arguments": {}}</tool_call>\n'
        '<tool_call>{"name": "b", "arguments": {"k": "v"}}</tool_call>'
    )
    _, rest, calls = feed([text[i : i + 7] for i in range(0, len(text), 7)])
    assert rest == ""
    assert [c.name for c in calls] == ["a", "b"]
    assert calls[1].arguments == {"k": "v"}


# ---- through the engine with SmolLM2 -----------------------------------------------
def collect(engine, req: GenerateRequest):
    chunks = list(engine.generate(req))
    return [c.text for c in chunks[:-1] if c.text], chunks[-1]


def test_answer_without_call_streams(smollm2_engine):
    req = GenerateRequest(
        model="smollm2",
        messages=(Message(role="user", content="Write a short poem about the sea."),),
        tools=(WEATHER_TOOL,),
        template=TOOLS_TEMPLATE,
        options=SamplingOptions(temperature=0.0, num_predict=24),
    )
    texts, last = collect(smollm2_engine, req)
    assert len(texts) > 5, texts  # streamed token by token, not in one final piece
    assert last.tool_calls == ()


def test_call_is_parsed_into_tool_calls(smollm2_engine):
    call_schema = {
        "type": "object",
        "properties": {
            "name": {"enum": ["get_weather"]},
            "arguments": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 20}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }
    req = GenerateRequest(
        model="smollm2",
        messages=(Message(role="user", content="What is the weather in Paris?"),),
        tools=(WEATHER_TOOL,),
        template=TOOLS_TEMPLATE,
        format=call_schema,  # force a bare JSON call from the small model
        options=SamplingOptions(temperature=0.0, num_predict=48),
    )
    texts, last = collect(smollm2_engine, req)
    assert texts == []  # the call never leaks as text
    assert last.done_reason == "stop"
    [call] = last.tool_calls
    assert call.name == "get_weather"
    assert isinstance(call.arguments["city"], str)

import pytest

from omax.errors import InvalidRequest
from omax.sharding.modelfile import parse, render

TEXT = '''# a comment
FROM ./model.gguf
SYSTEM """You are
a pirate."""
TEMPLATE {{ .Prompt }}
PARAMETER temperature 0.7
PARAMETER stop "<|im_end|>"
parameter stop <|im_start|>
PARAMETER num_ctx 4096
MESSAGE user """Hi
there"""
MESSAGE assistant Arr
LICENSE """MIT"""
'''


def test_parse():
    mf = parse(TEXT)
    assert mf.from_ == "./model.gguf"
    assert mf.system == "You are\na pirate."
    assert mf.template == "{{ .Prompt }}"
    assert mf.parameters == {
        "temperature": 0.7,
        "stop": ["<|im_end|>", "<|im_start|>"],
        "num_ctx": 4096,
    }
    assert mf.messages == [
        {"role": "user", "content": "Hi\nthere"},
        {"role": "assistant", "content": "Arr"},
    ]
    assert mf.license == ["MIT"]


def test_render_roundtrip():
    mf = parse(TEXT)
    text = render(mf.from_, mf.template, mf.system, mf.parameters, mf.messages, "MIT")
    again = parse(text)
    assert again == mf


@pytest.mark.parametrize(
    "text",
    ["SYSTEM hi", "FROM x\nADAPTER ./lora", "FROM x\nPARAMETER bogus 1", "FROM x\nPARAMETER top_k x",
     'FROM x\nSYSTEM """open', "FROM x\nMESSAGE robot hi", "FROM x\nFLY away"],
)  # fmt: skip
def test_invalid(text):
    with pytest.raises(InvalidRequest):
        parse(text)

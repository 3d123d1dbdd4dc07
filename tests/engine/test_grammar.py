"""Structured output: ``format`` "json" / JSON Schema constrains SmolLM2's decoding."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from omax.engine.grammar import apply_bitmask, mask_words
from omax.engine.request import GenerateRequest, Message, SamplingOptions
from omax.errors import InvalidRequest

from .test_generate import run_all

GREEDY = SamplingOptions(temperature=0.0, num_predict=96)
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer"},
        "languages": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
    },
    "required": ["name", "age", "languages"],
    "additionalProperties": False,
}


def chat(text: str, fmt=None, options: SamplingOptions = GREEDY) -> GenerateRequest:
    return GenerateRequest(
        model="smollm2",
        messages=(Message(role="user", content=text),),
        format=fmt,
        options=options,
    )


def test_apply_bitmask_keeps_only_set_bits():
    logits = torch.zeros(2, 70)
    mask = torch.zeros(2, mask_words(70), dtype=torch.int32)
    mask[0, 0] = 1 << 3
    mask[0, 2] = 1 << 5  # token 69
    mask[1, 1] = -(2**31)  # bit 31 of word 1: token 63
    apply_bitmask(logits, mask)
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [3, 69]
    assert torch.isfinite(logits[1]).nonzero().flatten().tolist() == [63]


@pytest.mark.parametrize("fmt", ["yaml", 3, ["json"], {"type": "object", "properties": 5}])
def test_bad_format_is_invalid_request(smollm2_engine, fmt):
    with pytest.raises(InvalidRequest, match="format|JSON Schema"):
        smollm2_engine.submit(chat("hi", fmt))


def test_format_json_output_parses(smollm2_engine):
    [res] = run_all(smollm2_engine, [chat("Give me a JSON object describing Paris.", "json")])
    assert res["done"].done_reason == "stop", res["text"]
    assert isinstance(json.loads(res["text"]), dict)


def test_schema_output_validates(smollm2_engine):
    [res] = run_all(smollm2_engine, [chat("Describe a programmer named Ada, 36, as JSON.", PERSON)])
    assert res["done"].done_reason == "stop", res["text"]
    jsonschema.validate(json.loads(res["text"]), PERSON)


def test_sampled_schema_output_validates(smollm2_engine):
    opts = SamplingOptions(temperature=0.9, typical_p=0.8, top_k=40, seed=7, num_predict=96)
    [res] = run_all(smollm2_engine, [chat("Invent a person as JSON.", PERSON, opts)])
    assert res["done"].done_reason == "stop", res["text"]
    jsonschema.validate(json.loads(res["text"]), PERSON)


def test_batched_with_unconstrained_and_greedy_unchanged(smollm2_engine):
    plain = chat(
        "Write one sentence about the sea.",
        options=SamplingOptions(temperature=0.0, num_predict=24),
    )
    [alone] = run_all(smollm2_engine, [plain])
    reqs = [
        chat("Describe a programmer named Ada, 36, as JSON.", PERSON),
        plain,
        chat("Give me a JSON object describing Paris.", "json"),
        plain,
    ]
    out = run_all(smollm2_engine, reqs)
    jsonschema.validate(json.loads(out[0]["text"]), PERSON)
    assert isinstance(json.loads(out[2]["text"]), dict)
    assert out[1]["text"] == alone["text"] == out[3]["text"]
    assert not alone["text"].lstrip().startswith("{")

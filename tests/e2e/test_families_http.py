"""Tiny GGUFs of two fast-path families, made by llama.cpp's converter (tests/archs.py),
created through the official ollama client and generated from over HTTP.

The session server runs the default quant, "int4" (omax.yaml ``omax.engine.quant``;
bf16 activations, 4-bit kernels on Q4_1 blocks, int8 for Q8_0), so its greedy text
cannot be required to equal fp32 transformers' bit for bit: a near tie may go the
other way and the texts part from there. Instead every token the server chose is
checked against transformers on the same file given the same prefix (teacher
forcing): it is transformers' argmax, or within a near-tie margin of it. A wrong
layout fails that at the first token; exact equality at quant "none" is what
tests/engine/test_families.py checks in-process for every family and format.
"""

from __future__ import annotations

import pytest
import torch

from tests.archs import ConverterMissing, llama_cpp_dir, tiny_ggufs, tiny_model
from tests.engine.conftest import gguf_spec

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PROMPT = "The quick brown fox jumps over the lazy dog while 7 cats watch from a tree."
SERVED = {"gemma3": "q4_1", "qwen2": "q8_0"}  # the int4 kernel's own blocks; int8
N = 16


@pytest.fixture(scope="module")
def served(server, tmp_path_factory) -> dict[str, tuple[str, object]]:
    """family -> (model name on the server, GGUF path), created from uploaded blobs."""
    import ollama

    try:
        llama_cpp_dir()
    except ConverterMissing as exc:
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("families-http")
    folders = {f: tiny_model(f, root / f) for f in SERVED}
    paths = tiny_ggufs([(folders[f], t) for f, t in SERVED.items()])
    client = ollama.Client(host=server, timeout=300)
    out = {}
    for (family, outtype), path in zip(SERVED.items(), paths, strict=True):
        name = f"tiny-{family}:{outtype}"
        progress = client.create(
            model=name, files={path.name: client.create_blob(path)}, stream=True
        )
        assert list(progress)[-1].status == "success"
        out[family] = (name, path)
    return out


@pytest.mark.parametrize("family", SERVED)
def test_greedy_over_http_follows_transformers(ollama_client, served, family):
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    name, path = served[family]
    reply = ollama_client.generate(
        model=name, prompt=PROMPT, raw=True, options={"temperature": 0, "num_predict": N}
    )
    context = list(reply.context)
    prompt, got = context[: reply.prompt_eval_count], context[reply.prompt_eval_count :]
    assert len(got) == N or reply.done_reason == "stop"
    tokenizer = Tokenizer.from_str(gguf_spec(path).tokenizer_json)
    assert prompt[-5:] == tokenizer.encode(PROMPT, add_special_tokens=False).ids[-5:]
    assert tokenizer.decode(got, skip_special_tokens=False) == reply.response

    ref = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    with torch.inference_mode():
        logits = ref(torch.tensor([context])).logits[0].float()
    for step, token in enumerate(got):
        row = logits[len(prompt) - 1 + step]
        tie = 0.02 * float(row.max() - row.min())  # bf16 activations can flip a near tie
        assert row[token] >= row.max() - tie, (step, token, int(row.argmax()))

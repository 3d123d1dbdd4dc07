"""Every GGUF tensor type omax accepts decodes exactly as the reference ``gguf`` package
does, and the 4- and 5-bit ones reach the packed kernels as their own blocks
(omax.engine.weights).

Blocks are random bytes with their fp16 scale fields overwritten by finite fp16 values
(random bit patterns: every exponent, subnormals and both signs of zero), so every code
and sub-block scale layout is exercised. Values are compared bit for bit.
"""

from __future__ import annotations

from dataclasses import replace

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QT
from gguf.constants import GGML_QUANT_SIZES

from omax.engine import weights
from omax.engine.linear import Lin
from omax.engine.weights import CodeBlocks
from omax.sharding.tensors import RawTensor

# byte offsets of each block type's fp16 fields (ggml-common.h / gguf-py's quants.py)
HALF_FIELDS = {
    "Q8_0": (0,),
    "Q4_0": (0,),
    "Q4_1": (0, 2),
    "Q5_0": (0,),
    "Q5_1": (0, 2),
    "Q2_K": (80, 82),
    "Q3_K": (108,),
    "Q4_K": (0, 2),
    "Q5_K": (0, 2),
    "Q6_K": (208,),
}
FLOATS = {"F32": (np.float32, np.uint32, 0x7F800000), "F16": (np.float16, np.uint16, 0x7C00)}


def _finite_bits(rng: np.random.Generator, n: int, utype, exp_mask: int) -> np.ndarray:
    """Random bit patterns of a float type, every exponent but the inf/NaN one."""
    bits = rng.integers(0, np.iinfo(utype).max, size=n, dtype=utype, endpoint=True)
    return np.where(bits & exp_mask == exp_mask, bits & ~utype(exp_mask), bits).astype(utype)


def random_blocks(gtype: str, n: int, k: int, seed: int = 0, *, scale: float | None = None):
    """A RawTensor of ``gtype`` [n, k] as the store holds it: random blocks whose fp16
    fields are random finite fp16 bit patterns, or N(0, ``scale``) values if given."""
    rng = np.random.default_rng(seed)
    values, size = GGML_QUANT_SIZES[QT[gtype]]
    blocks = rng.integers(0, 256, size=(n * k // values, size), dtype=np.uint8)
    for at in HALF_FIELDS[gtype]:
        if scale is None:
            h = _finite_bits(rng, len(blocks), np.uint16, 0x7C00)
        else:
            h = (rng.standard_normal(len(blocks)) * scale).astype(np.float16).view(np.uint16)
        blocks[:, at : at + 2] = h.view(np.uint8).reshape(-1, 2)
    return RawTensor("w", blocks.reshape(n, -1), "quantized", (n, k), gtype)


def float_tensor(gtype: str, n: int, k: int, seed: int = 0) -> RawTensor:
    """F32/F16/BF16 as the GGUF importer stores them: typed arrays, bf16 as uint16."""
    rng = np.random.default_rng(seed)
    if gtype == "BF16":
        bits = _finite_bits(rng, n * k, np.uint16, 0x7F80).reshape(n, k)
        return RawTensor("w", bits, "bfloat16", (n, k), "BF16")
    ftype, utype, exp_mask = FLOATS[gtype]
    data = _finite_bits(rng, n * k, utype, exp_mask).view(ftype).reshape(n, k)
    return RawTensor("w", data, np.dtype(ftype).name, (n, k), gtype)


def reference(raw: RawTensor) -> torch.Tensor:
    """``gguf.quants.dequantize`` of ``raw``'s bytes, float32 of ``raw.shape``."""
    data = raw.data.view(np.uint8)
    values = gguf.quants.dequantize(data, QT[raw.ggml_type or ""])
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(raw.shape)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype == torch.float32 and torch.equal(
        a.view(torch.int32), b.view(torch.int32)
    )


@pytest.mark.parametrize("gtype", ["F32", "F16", "BF16", *HALF_FIELDS])
def test_dequantize_matches_gguf_bit_for_bit(gtype):
    for seed in range(3):
        n, k = 48, 512
        raw = float_tensor(gtype, n, k, seed) if gtype in ("F32", "F16", "BF16") else None
        raw = raw or random_blocks(gtype, n, k, seed)
        ref = reference(raw)
        assert not ref.isnan().any()
        got = weights.dequantize(raw, torch.float32)
        assert got.shape == (n, k)
        assert same_bits(got, ref), (gtype, seed, (got != ref).sum().item())
        # other dtypes: the exact float32 values, rounded once
        assert torch.equal(weights.dequantize(raw, torch.bfloat16), ref.bfloat16())


@pytest.mark.parametrize("gtype", CodeBlocks.TYPES)
def test_code_blocks_are_the_gguf_values(gtype):
    """``scale * code + low`` per 32 is gguf's value: the same bits for the ``_1`` and K
    types; for Q4_0 and Q5_0 (gguf: ``d * (q - 8)``, ``d * (q - 16)``) the same values,
    a zero possibly +0 for -0."""
    raw = random_blocks(gtype, 64, 512)
    blocks = CodeBlocks.from_raw(raw)
    bits = 5 if gtype.startswith("Q5") else 4
    assert blocks.bits == bits and blocks.codes.dtype == torch.uint8
    assert int(blocks.codes.max()) == 2**bits - 1  # random bytes: every code occurs
    assert blocks.scale.shape == blocks.low.shape == (64, 16)
    assert blocks.scale.dtype == torch.float32
    ref = reference(raw)
    assert torch.equal(blocks.dequantize(), ref)
    if gtype not in ("Q4_0", "Q5_0"):
        assert same_bits(blocks.dequantize(), ref)


def test_code_blocks_reject_other_types():
    with pytest.raises(Exception, match="not a 4- or 5-bit"):
        CodeBlocks.from_raw(random_blocks("Q6_K", 4, 256))


def test_fused_blocks_take_the_widest_codes():
    parts = [CodeBlocks.from_raw(random_blocks(t, 64, 256)) for t in ("Q4_K", "Q5_0")]
    fused = CodeBlocks.cat(parts)
    assert fused.bits == 5 and fused.codes.shape == (128, 256)
    assert torch.equal(fused.dequantize(), torch.cat([p.dequantize() for p in parts]))


@pytest.mark.parametrize("gtype", CodeBlocks.FOUR_BIT)
def test_int4_kernel_runs_the_blocks(gtype):
    """Q4_0, Q4_1 and Q4_K all take the int4 kernel; with fp32 activations its product
    is the GGUF weights' (scale/zero held in fp32, zero = low + 8 scale rounded once)."""
    q4 = CodeBlocks.from_raw(random_blocks(gtype, 96, 512, scale=0.01))
    lin = Lin(q4, "int4", torch.float32)
    assert lin.quant == "int4"
    x = torch.randn(3, 512)
    ref = x.double() @ q4.dequantize().double().T
    assert torch.allclose(lin(x).double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_convert_keeps_every_4_and_5_bit_type_as_blocks():
    """``keep_blocks``: 2-D Q4_0/Q4_1/Q4_K/Q5_0 tensors arrive as blocks holding exactly
    the values (llama's q/k row permutation applied to codes and parameters alike);
    others dense."""
    from accelerate import init_empty_weights
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    with init_empty_weights():
        meta = LlamaForCausalLM(cfg)
    raws = [
        replace(random_blocks("Q4_K", 256, 256, 1), name="blk.0.attn_q.weight"),
        replace(random_blocks("Q4_0", 128, 256, 2), name="blk.0.attn_k.weight"),
        replace(random_blocks("Q4_1", 128, 256, 3), name="blk.0.attn_v.weight"),
        replace(random_blocks("Q5_0", 256, 256, 4), name="blk.0.attn_output.weight"),
        replace(random_blocks("Q6_K", 256, 512, 5), name="blk.0.ffn_down.weight"),
    ]
    config = cfg.to_dict()

    def run(keep: bool) -> dict:
        return dict(weights.convert(raws, fmt="gguf", config=config, model=meta, keep_blocks=keep))

    dense, kept = run(False), run(True)
    assert dense.keys() == kept.keys() and len(dense) == 5
    for name, t in kept.items():
        blocks = "mlp" not in name
        assert isinstance(t, CodeBlocks) == blocks, name
        assert torch.equal(t.dequantize() if blocks else t, dense[name]), name
    # the q rows really were permuted (so the test would see a permutation skipped)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(dense[q], weights.dequantize(raws[0], torch.float32))

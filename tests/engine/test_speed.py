"""The lean fast path (omax.engine.fastpath): same maths as transformers, fewer ops."""

from __future__ import annotations

import pytest
import torch

from omax.engine import loader, weights
from omax.engine.engine import Engine
from omax.engine.fastpath import FastBuilder, Lin
from omax.engine.request import GenerateRequest, SamplingOptions
from omax.engine.runner import FastRunner, Runner
from tests.engine.conftest import SMOLLM2_GGUF, gguf_tensors, state_dict_raw


def _fast_fp32(model, spec):
    """The fast path with dense fp32 weights and activations (isolates the maths)."""
    from accelerate import init_empty_weights

    config = loader.build_config(spec)
    with init_empty_weights(include_buffers=True):
        cls = loader._model_class(spec)
        make = cls.from_config if hasattr(cls, "from_config") else cls._from_config
        meta = make(config, dtype=torch.float32)
    b = FastBuilder(config, quant="bf16", act=torch.float32, device=torch.device("cpu"))
    for name, t in weights.convert(
        state_dict_raw(model), fmt=spec.format, config=spec.config, model=meta
    ):
        b.add(name, t)
    return b.build()


def test_fast_fp32_matches_transformers_logits(tiny_model_and_spec):
    model, spec = tiny_model_and_spec
    fast = FastRunner(_fast_fp32(model, spec), max_slots=2, max_len=64)
    ref = Runner(model, max_slots=2, max_len=64)
    ids = [1, 5, 9, 200, 3000, 17, 4]
    assert torch.allclose(fast.prefill(ids, 0, slot=0), ref.prefill(ids, 0, slot=0), atol=1e-4)
    for b in (fast, ref):
        b.copy_slot(0, 1, len(ids))
    out_f = fast.decode([7, 8], [len(ids), len(ids)])
    out_r = ref.decode([7, 8], [len(ids), len(ids)])
    assert torch.allclose(out_f, out_r, atol=1e-4)


def test_int4_and_int8_linears_close_to_dense():
    torch.manual_seed(0)
    w = torch.randn(96, 64)
    x = torch.randn(3, 64).bfloat16()
    ref = x.float() @ w.T
    for quant, tol in (("int8", 0.02), ("int4", 0.15)):
        lin = Lin(w, quant, torch.bfloat16)
        err = (lin(x).float() - ref).norm() / ref.norm()
        assert err < tol, (quant, err)
        big = torch.randn(8, 64).bfloat16()  # the dense copy holds the same weights
        assert torch.allclose(lin(big).float(), big.float() @ lin.dense.float().T, atol=1)


@pytest.mark.xfail(reason="int4 requantisation diverges from fp32 at the first token; open")
def test_int4_agrees_with_fp32_greedy(smollm2_spec, smollm2_engine):
    fast = Engine.load(smollm2_spec, gguf_tensors(SMOLLM2_GGUF), quant="int4")
    try:
        req = GenerateRequest(
            model="s",
            prompt="What is the capital of France?",
            options=SamplingOptions(temperature=0.0, num_predict=16),
        )
        a = "".join(c.text for c in fast.generate(req))
        b = "".join(c.text for c in smollm2_engine.generate(req))
        assert a and b
        assert a.split()[:3] == b.split()[:3]
    finally:
        fast.close()

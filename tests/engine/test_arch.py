"""Families as data: ``Arch`` from configs (plain data), and the fast path's exact mode
against transformers' own forward for a tiny random model of every family."""

from __future__ import annotations

import math

import pytest
import torch

from omax.engine.arch import FAST_FAMILIES, arch_of, fast_family
from omax.engine.generic import GenericRunner
from omax.engine.loader import load_fast
from omax.engine.runner import FastRunner
from omax.engine.spec import ModelSpec

from .conftest import state_dict_raw

# What each family sets beyond the shapes: small windows so a 20-token prompt crosses
# them, head_dim and query scalar unlike the defaults, gemma3's two rotary bases.
FAMILIES = {
    "llama": {},
    "mistral": {"sliding_window": 8},
    "qwen2": {},
    "qwen3": {"head_dim": 32},
    "gemma2": {"head_dim": 32, "query_pre_attn_scalar": 24, "sliding_window": 8},
    "gemma3_text": {"head_dim": 32, "sliding_window": 8, "rope_local_base_freq": 100.0},
    "phi3": {},
}


def tiny(model_type: str, options: dict | None = None):
    """A tiny random model of ``model_type`` with config ``options`` (default: the
    family's in ``FAMILIES``), norms and biases moved off their initial values."""
    import transformers

    cfg = transformers.AutoConfig.for_model(
        model_type,
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        **(FAMILIES[model_type] if options is None else options),
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():  # norms at 1 and biases at 0 would hide a misplaced one
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def test_every_family_is_on_the_fast_path():
    assert set(FAMILIES) == set(FAST_FAMILIES)


def test_arch_reads_what_differs_as_data():
    gemma2 = arch_of(tiny("gemma2").config.to_dict())
    assert gemma2.sandwich and gemma2.norm_offset == 1.0 and gemma2.act == "gelu_tanh"
    assert gemma2.attn_scale == 24**-0.5 and gemma2.embed_scale == math.sqrt(64)
    assert gemma2.attn_softcap == 50.0 and gemma2.final_softcap == 30.0
    assert gemma2.windows == (8, None, 8)
    import transformers

    cfg = transformers.AutoConfig.for_model("gemma3_text", num_hidden_layers=6)
    gemma3 = arch_of(cfg.to_dict())  # five local layers, then a global one
    assert gemma3.qk_norm and gemma3.rope == ("sliding_attention",) * 5 + ("full_attention",)
    assert arch_of(tiny("qwen2").config.to_dict()).qkv_bias
    assert arch_of(tiny("mistral").config.to_dict()).windows == (8, 8, 8)
    llama = arch_of(tiny("llama").config.to_dict())
    assert llama.windows == (None, None, None) and not llama.sandwich and llama.act == "silu"
    assert not fast_family({"model_type": "gpt2", "n_layer": 2})


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_exact_mode_matches_transformers(model_type, smollm2_spec):
    """quant "none" (fp32) against transformers' own forward (the generic runner),
    across sliding windows: prefill logits, then decode of two rows at ragged lengths."""
    model = tiny(model_type)
    spec = ModelSpec(
        config=model.config.to_dict(),
        tokenizer_json=smollm2_spec.tokenizer_json,
        format="safetensors",
    )
    fast = FastRunner(
        load_fast(spec, state_dict_raw(model), quant="none").model,
        max_slots=2,
        max_len=64,
        native=False,
    )
    ref = GenericRunner(model, max_slots=2, max_len=64)
    ids = [(7 * i + 3) % 500 + 5 for i in range(20)]
    for runner in (fast, ref):
        runner.prefill(ids[:12], 0, slot=1)
    assert torch.allclose(fast.prefill(ids, 0, slot=0), ref.prefill(ids, 0, slot=0), atol=2e-5)
    got = fast.decode([30, 31], [20, 12])
    want = ref.decode([30, 31], [20, 12])
    assert torch.allclose(got, want, atol=2e-5), (got - want).abs().max()


def test_a_family_off_the_fast_path_runs_on_transformers_public_api(smollm2_spec):
    """GPT-2 is no fast-path family: the engine runs it through the model's own
    forward and cache (the generic runner) and greedy tokens equal ``generate``'s."""
    import transformers

    from omax.engine.engine import Engine
    from omax.engine.generic import GenericRunner
    from omax.engine.request import GenerateRequest, SamplingOptions

    cfg = transformers.GPT2Config(vocab_size=49152, n_embd=64, n_layer=2, n_head=4, n_positions=256)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    config = {**model.config.to_dict(), "architectures": ["GPT2LMHeadModel"]}
    assert not fast_family(config)
    spec = ModelSpec(
        config=config,
        tokenizer_json=smollm2_spec.tokenizer_json,
        tokenizer_config=smollm2_spec.tokenizer_config,
        format="safetensors",
    )
    eng = Engine.load(spec, state_dict_raw(model), max_batch=4, max_ctx=128)
    try:
        assert isinstance(eng.batcher.runner, GenericRunner)
        opts = SamplingOptions(temperature=0.0, num_predict=12)
        reqs = [
            GenerateRequest(model="g", prompt=p, raw=True, options=opts) for p in ("Hi", "A b c")
        ]
        ids = [eng.submit(r) for r in reqs]  # batched together: each row apart
        for rid, req in zip(ids, reqs, strict=True):
            done = None
            while done is None:
                for chunk in eng.poll([rid], timeout=5.0).get(rid, []):
                    done = chunk if chunk.done else done
            prompt = eng.tokenizer.encode(req.prompt, add_special_tokens=False)
            x = torch.tensor([prompt])
            with torch.inference_mode():
                want = model.generate(
                    x,
                    attention_mask=torch.ones_like(x),
                    max_new_tokens=12,
                    do_sample=False,
                    eos_token_id=None,
                    pad_token_id=0,
                )[0, len(prompt) :].tolist()
            assert list(done.context[len(prompt) :]) == want
    finally:
        eng.close()

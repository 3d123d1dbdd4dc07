"""The native decode step runs every fast-path family as the Python step does.

Each family is a tiny random model built by transformers from its own config (so
``omax.engine.arch`` reads it as it reads a real one), with its norms and biases moved
off their initial values (else a QK norm or a bias would be the identity and a
mistake in it would not show) and weights large enough (``initializer_range``) that
attention is peaked and gemma2's soft-caps bite. Every prompt is longer than the
sliding windows, so a window applied wrongly changes the logits. The Python step
(``omax.engine.fastpath``) is the reference."""

from __future__ import annotations

import math

import pytest
import torch

from omax.engine import native
from omax.engine.loader import load_fast
from omax.engine.runner import FastRunner, Segment
from omax.engine.spec import ModelSpec

from .conftest import state_dict_raw
from .test_arch import tiny

WINDOW = 8
# (id, model_type, config beyond the shared tiny shape)
FAMILIES = [
    ("llama", "llama", {}),
    ("mistral", "mistral", {"sliding_window": WINDOW}),
    ("qwen2", "qwen2", {}),  # qkv bias
    ("qwen3", "qwen3", {"head_dim": 32}),  # QK norm
    (
        "gemma2",
        "gemma2",
        {
            "head_dim": 32,
            "query_pre_attn_scalar": 24,
            "sliding_window": WINDOW,
            "attn_logit_softcapping": 5.0,
            "final_logit_softcapping": 2.0,
        },
    ),
    (
        "gemma3",
        "gemma3_text",
        {
            "head_dim": 32,
            "sliding_window": WINDOW,
            "rope_local_base_freq": 100.0,
            # a global layer among the local ones: two rotary tables, two windows
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
        },
    ),
    ("phi3", "phi3", {}),
    ("phi3-partial", "phi3", {"partial_rotary_factor": 0.5}),
]
IDS = [f[0] for f in FAMILIES]
SLOTS = 16
PROMPTS = [[(7 * s + 3 * j) % 500 + 3 for j in range(12 + (5 * s) % 9)] for s in range(SLOTS)]
PROMPTS[3] = PROMPTS[3][:5]  # one row inside the window


@pytest.fixture(scope="module")
def built():
    """The module, built first where ``make install`` has not (a load where it has)."""
    return native.build()


@pytest.fixture(scope="module")
def load(smollm2_spec):
    """``load(family, quant)``: the family's ``FastDecoder``, built once per module.
    quant "exact" is the exact step (quant "none": fp32 activations) over the weights
    rounded to bf16, as the bf16 quant holds them."""
    cache: dict[tuple[str, str], object] = {}

    def get(family: tuple, quant: str):
        name, model_type, extra = family
        if (name, quant) not in cache:
            model = tiny(model_type, {"initializer_range": 0.2, **extra})  # peaked attention
            if quant == "exact":
                model = model.to(torch.bfloat16).to(torch.float32)
            spec = ModelSpec(
                config=model.config.to_dict(),
                tokenizer_json=smollm2_spec.tokenizer_json,
                tokenizer_config=smollm2_spec.tokenizer_config,
                format="safetensors",
            )
            q = "none" if quant == "exact" else quant
            cache[name, quant] = load_fast(spec, state_dict_raw(model), quant=q).model
        return cache[name, quant]

    return get


@pytest.fixture(params=FAMILIES, ids=IDS)
def family(request):
    return request.param


@pytest.fixture(params=["int8", "bf16"])
def fast(request, family, load):
    return load(family, request.param)


def _runner(model, built, use_native: bool) -> FastRunner:
    runner = FastRunner(model, max_slots=SLOTS, max_len=64, native=use_native)
    assert (runner.native is not None) == use_native
    for slot, prompt in enumerate(PROMPTS):
        runner.prefill(prompt, 0, slot=slot)
    return runner


def _ulp(x: float) -> float:
    """A bf16 ulp at ``x``."""
    return 2.0 ** (math.floor(math.log2(x)) - 7)


def test_every_family_takes_the_native_step(fast, built):
    assert native.NativeDecoder.supports(fast, 64)


@pytest.mark.parametrize("rows", [1, 3, 16])
def test_native_decode_matches_the_python_step(fast, built, rows):
    """Logits within a few bf16 ulps of the largest: the kernels sum in another order
    (the attention kernel, for head_dim 32, is not torch's SDPA; measured: up to ~4
    ulps, qwen3). gemma2's soft-capped scores round to bf16 between the Python step's
    ops and stay fp32 in the native kernel, so they are further apart there (~12 ulps;
    the next test holds them to the exact step)."""
    py, nat = _runner(fast, built, False), _runner(fast, built, True)
    ulps = 24 if fast.arch.attn_softcap else 8
    for step in range(2):
        positions = [len(PROMPTS[s]) + step for s in range(rows)]
        tokens = [5 + 3 * s + step for s in range(rows)]
        a, b = py.decode(tokens, positions), nat.decode(tokens, positions)
        tol = ulps * _ulp(float(a.abs().max()))
        assert (a - b).abs().max() <= tol, ((a - b).abs().max(), tol)
        top = a.topk(2, dim=-1).values
        clear = top[:, 0] - top[:, 1] > 2 * tol  # no near-tie: the same greedy token
        assert torch.equal(a.argmax(-1)[clear], b.argmax(-1)[clear])


def test_native_decode_is_as_close_to_exact_as_the_python_step(family, load, built):
    """Against the exact step (fp32 activations over the same bf16 weights) the native
    step errs no more than the Python step, on average over 16 rows: its differences
    from the Python step are rounding, not a family's feature applied wrongly."""
    fast, exact = load(family, "bf16"), load(family, "exact")
    runners = [_runner(m, built, n) for m, n in ((exact, False), (fast, False), (fast, True))]
    positions = [len(p) for p in PROMPTS]
    tokens = [5 + 3 * s for s in range(SLOTS)]
    want, py, nat = (r.decode(tokens, positions) for r in runners)
    assert (nat - want).abs().mean() <= 1.15 * (py - want).abs().mean()


def test_a_pinned_row_computes_the_same_bits_alone_and_in_a_batch(fast, built):
    nat = _runner(fast, built, True)
    first = len(PROMPTS[0])
    alone = nat.decode([5], [first], pinned=[True])[0]
    for others in ([1, 2, 3, 4], [3, 9, 14, 7]):  # rows inside and past the window
        batch = nat.decode(
            [5, *(6 + s for s in others)],
            [first, *(len(PROMPTS[s]) for s in others)],
            pinned=[True] + [False] * len(others),
        )
        assert torch.equal(batch[0], alone)


@pytest.mark.parametrize("positions", [[0], [5], [40], [40, 3, 20, 7]])
@pytest.mark.parametrize("window", [0, WINDOW])
def test_native_attention_with_window_scale_and_cap(built, positions, window):
    """Each row attends to its own keys in its window, with the family's softmax scale
    and soft-cap, as an fp32 reference computes it."""
    torch.manual_seed(1)
    nh, nkv, hd, rows = 4, 2, 32, len(positions)
    k = torch.randn(rows + 1, nkv, 64, hd).bfloat16()
    v = torch.randn(rows + 1, nkv, 64, hd).bfloat16()
    q = torch.randn(rows, nh * hd).bfloat16()
    length = max(positions) + 1
    scale, cap = 24**-0.5, 5.0
    got = built.attend(q, k, v, positions, length, nh, nkv, hd, False, window, scale, cap)
    for r, p in enumerate(positions):
        first = max(0, p + 1 - window) if window else 0
        kr = k[r, :, first : p + 1].float().repeat_interleave(nh // nkv, 0)
        vr = v[r, :, first : p + 1].float().repeat_interleave(nh // nkv, 0)
        s = q[r].view(nh, 1, hd).float() @ kr.transpose(-1, -2) * scale
        want = (torch.softmax(torch.tanh(s / cap) * cap, -1) @ vr).reshape(-1)
        assert (got[r].float() - want).abs().max() < 0.02


def test_native_step_runs_prompts_with_decode_rows_as_the_python_step(fast, built):
    """A step of decode rows and prompts (a whole one, and a long one's two chunks in
    the staging row, the second in a later step) runs in one native call (each prompt
    row attends to its slot's keys up to its own position) and gives the Python
    step's logits, within the decode tolerance above; so does a decode of the rows
    it wrote, which reads the keys it left in the cache. (test_native.py runs it on
    SmolLM2's head_dim 64.)"""
    py, nat = _runner(fast, built, False), _runner(fast, built, True)
    # the families whose head_dim the native attention takes (the tiny shape's 16 not)
    assert nat._native_prompts([Segment([5], 0, 3)], [False]) == (fast.head_dim == 32)
    whole = [(11 * j) % 400 + 3 for j in range(20)]  # past the window
    long = [(13 * j) % 400 + 3 for j in range(30)]
    staging = nat.staging
    steps = [
        (
            [5, 6, 7],
            [len(PROMPTS[s]) for s in range(3)],
            [Segment(whole, 0, 3), Segment(long[:12], 0, staging)],
        ),
        (
            [8, 9, 10, 11],
            [len(PROMPTS[s]) + 1 for s in range(3)] + [20],
            [Segment(long[12:], 12, staging)],
        ),
    ]
    ulps = 24 if fast.arch.attn_softcap else 8
    for tokens, positions, segments in steps:
        (a, a_lasts), (b, b_lasts) = (r.step(tokens, positions, segments) for r in (py, nat))
        for x, y in [(a, b), *zip(a_lasts, b_lasts, strict=True)]:
            tol = ulps * _ulp(float(x.abs().max()))
            assert (x - y).abs().max() <= tol, ((x - y).abs().max(), tol)
    nat.copy_slot(staging, 4, len(long))
    py.copy_slot(staging, 4, len(long))
    tokens, positions = [12, 13, 14, 15, 16], [len(PROMPTS[s]) + 2 for s in range(3)] + [21, 30]
    a, b = py.decode(tokens, positions), nat.decode(tokens, positions)
    tol = ulps * _ulp(float(a.abs().max()))
    assert (a - b).abs().max() <= tol, ((a - b).abs().max(), tol)

"""Every fast-path family gives transformers' greedy tokens, from safetensors and from
GGUF files that llama.cpp's own converter wrote (tests/archs.py).

- quant "none" (fp32 weights and activations): omax's greedy tokens equal transformers'
  ``generate`` on the same weights, token for token, for every family and format. For
  a GGUF the reference is transformers' own GGUF loader on the same file (the same
  dequantised weights under the config transformers reads from it).
- quant "int4" (bf16 activations; 4-bit kernels on Q4_0/Q4_1 blocks, int8 elsewhere)
  cannot be bit-identical: its last-position logits point the same way as fp32
  transformers' (cosine > 0.99) and its first token is transformers' unless that is a
  near tie, which catches a wrong layout without demanding fp32 bits.
- The F32 GGUF's weights, run under the original config, give the original model's
  logits: the converter's renames, q/k permutation and gemma's ``1 + w`` norms, and
  omax's undoing of them, are right. The GGUF's own config is a different matter: the
  options that the metadata, or transformers' reading of it, drop are pinned in
  ``GGUF_LOSES``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from omax.engine import native
from omax.engine.arch import arch_of
from omax.engine.engine import Engine
from omax.engine.loader import build_config
from omax.engine.request import GenerateRequest, SamplingOptions
from omax.engine.runner import FastRunner
from omax.sharding.importers.gguf import UNMAPPED
from tests.archs import (
    FAMILIES,
    ConverterMissing,
    gguf_path,
    llama_cpp_dir,
    tiny_ggufs,
    tiny_model,
)

from .conftest import gguf_spec, gguf_tensors, hf_folder_spec, safetensors_raw

pytestmark = pytest.mark.slow
# omax's side runs here; benchmarks/gpu_bench.sh sets "cuda" on a GPU machine (the
# references stay transformers on the CPU)
DEVICE = os.environ.get("OMAX_TEST_DEVICE", "cpu")

PROMPT = "The quick brown fox jumps over the lazy dog while 7 cats watch from a tree."
N = 24
# Every family in every format the issue names; one more GGUF type per family, in turn,
# so that each of bf16, Q4_1, Q5_0 and Q5_1 is covered somewhere.
EXACT = ("safetensors", "f32", "f16", "q8_0", "q4_0")
EXTRA = dict(zip(FAMILIES, ("bf16", "q4_1", "q5_0", "q5_1", "bf16", "q4_1", "q5_1"), strict=True))
INT4 = ("safetensors", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")

# The ``Arch`` fields that these tiny models lose on the way through a GGUF: what
# convert_hf_to_gguf.py writes, as transformers' GGUF config mapping (which omax's
# importer follows) reads it back. Real checkpoints mostly use the values transformers
# falls back to, which is why the loss rarely shows.
GGUF_LOSES = {
    "mistral": ({"model_type", "windows"}, "llama.cpp writes Mistral as llama, no window"),
    "qwen2": ({"windows"}, "llama.cpp writes no sliding-window key for qwen2"),
    "gemma2": (
        {"attn_scale"},
        "query_pre_attn_scalar is not in the GGUF (transformers' default 256 stands); "
        "the soft-caps, which transformers' tables do not map, omax's importer reads",
    ),
    "gemma3": (
        {"attn_scale", "windows", "rope"},
        "query_pre_attn_scalar and the layer pattern are not in the GGUF: transformers "
        "(like llama.cpp) assumes five local layers to one global",
    ),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: fastest for models this small; on a busy machine more threads
    spin against each other and a tiny generate takes many times longer."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def families(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    folders = {f: tiny_model(f, root / f) for f in FAMILIES}
    folders["llama-v1000"] = tiny_model("llama", root / "llama-v1000", vocab=1000)
    return folders


@pytest.fixture(scope="session")
def ggufs(families) -> dict[str, Path]:
    """Every family's folder, with every GGUF the tests read converted into it."""
    try:
        llama_cpp_dir()
    except ConverterMissing as exc:
        pytest.skip(str(exc))
    types = {*EXACT, *EXTRA.values(), *INT4} - {"safetensors"}
    jobs = [(families[f], t) for f in FAMILIES for t in sorted(types)]
    tiny_ggufs([*jobs, (families["llama-v1000"], "q4_0")])
    return families


@functools.cache
def source(folder: Path, fmt: str):
    """(spec, raw tensors, transformers model) for ``folder`` in format ``fmt``; the
    GGUF's model is transformers' own reading of the file, dequantised."""
    from transformers import AutoModelForCausalLM

    if fmt == "safetensors":
        ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        return hf_folder_spec(folder), safetensors_raw(folder), ref.eval()
    path = gguf_path(folder, fmt)
    spec = gguf_spec(path)
    # the keys omax's importer reads beyond transformers' GGUF tables (soft-caps, phi3's
    # window) are the original model's: transformers' reading gets them too
    extra = {k: spec.config[k] for k in UNMAPPED.values() if k in spec.config}
    ref = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=path.name, dtype=torch.float32, **extra
    )
    return spec, gguf_tensors(path), ref.eval()


def greedy(engine: Engine) -> tuple[list[int], list[int]]:
    """(prompt ids, omax's ``N`` greedy tokens) for ``PROMPT``."""
    req = GenerateRequest(
        model="t", prompt=PROMPT, raw=True, options=SamplingOptions(temperature=0.0, num_predict=N)
    )
    ids, _ = engine.encode_prompt(req)
    done = next(c for c in engine.generate(req) if c.done)
    return ids, list(done.context[len(ids) :])


@functools.cache
def reference(folder: Path, fmt: str, ids: tuple[int, ...]) -> tuple[list[int], torch.Tensor]:
    """transformers' ``N`` greedy tokens after ``ids`` and its last-position logits."""
    model = source(folder, fmt)[2]
    x = torch.tensor([ids])
    with torch.inference_mode():
        out = model.generate(
            x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=N,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
        logits = model(x).logits[0, -1].float()
    return out[0, len(ids) :].tolist(), logits


def last_logits(engine: Engine, ids: list[int]) -> torch.Tensor:
    runner = FastRunner(engine.loaded.model, max_slots=1, max_len=len(ids))
    return runner.prefill(ids, 0).float().cpu()


def load(folder: Path, fmt: str, quant: str) -> Engine:
    spec, tensors, _ = source(folder, fmt)
    return Engine.load(spec, tensors, device=DEVICE, quant=quant, max_batch=2, max_ctx=128)


@pytest.mark.parametrize(
    ("family", "fmt"),
    [(f, t) for f in FAMILIES for t in (*EXACT, EXTRA[f])],
)
def test_greedy_equals_transformers(ggufs, family, fmt):
    eng = load(ggufs[family], fmt, "none")
    try:
        ids, got = greedy(eng)
    finally:
        eng.close()
    want, _ = reference(ggufs[family], fmt, tuple(ids))
    assert len(ids) > 16  # past every family's window of 8
    assert got == want


@pytest.mark.parametrize(("family", "fmt"), [(f, t) for f in FAMILIES for t in INT4])
def test_int4_points_where_fp32_does(ggufs, family, fmt):
    eng = load(ggufs[family], fmt, "int4")
    try:
        model = eng.loaded.model
        assert model.quant == "int4"
        if fmt.startswith("q5") and DEVICE == "cpu":  # the native kernel's, where built
            lins = [x for layer in model.layers for x in (layer.qkv, layer.o, layer.gu, layer.down)]
            quants = {x.quant for x in lins}
            assert ("int5" in quants) == (native.own_kernels() is not None), quants
        ids, got = greedy(eng)
        logits = last_logits(eng, ids)
    finally:
        eng.close()
    want, ref_logits = reference(ggufs[family], fmt, tuple(ids))
    assert F.cosine_similarity(logits, ref_logits, dim=0) > 0.99
    # bf16 activations can flip a near tie: within 2% of the logit range is a tie
    tie = 0.02 * float(ref_logits.max() - ref_logits.min())
    assert got[0] == want[0] or ref_logits[got[0]] >= ref_logits.max() - tie


@pytest.mark.parametrize("family", FAMILIES)
def test_gguf_weights_are_the_original_models(ggufs, family):
    """F32 GGUF weights under the original config: the original model's logits."""
    from transformers import AutoModelForCausalLM

    folder = ggufs[family]
    spec = gguf_spec(gguf_path(folder, "f32"))
    overrides = {}
    if family == "mistral":  # omax reads a llama GGUF as llama: compare without window
        overrides = {"sliding_window": None}
    else:
        spec = dataclasses.replace(spec, config=json.loads((folder / "config.json").read_text()))
    eng = Engine.load(spec, gguf_tensors(gguf_path(folder, "f32")), device=DEVICE, max_ctx=128)
    try:
        ids, _ = greedy(eng)
        logits = last_logits(eng, ids)
    finally:
        eng.close()
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **overrides).eval()
    with torch.inference_mode():
        want = ref(torch.tensor([ids])).logits[0, -1].float()
    torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_gguf_config_loses_only_what_is_known(ggufs, family):
    """The family options a GGUF drops are exactly ``GGUF_LOSES`` says: a new loss
    fails here, and so does a fixed one (then shrink the table)."""
    folder = ggufs[family]
    original = arch_of(json.loads((folder / "config.json").read_text()))
    from_gguf = arch_of(build_config(gguf_spec(gguf_path(folder, "f32"))).to_dict())
    lost = {
        k: (getattr(original, k), getattr(from_gguf, k))
        for k in original.__dataclass_fields__
        if getattr(original, k) != getattr(from_gguf, k)
        and not (k == "eps" and getattr(from_gguf, k) == pytest.approx(getattr(original, k)))
    }
    fields, why = GGUF_LOSES.get(family, (set(), ""))
    assert set(lost) == fields, (lost, why)


def test_int4_loads_a_4bit_gguf_whose_vocab_is_no_multiple_of_16(ggufs):
    """torch's int4 pack wants output rows in multiples of 16: such a tensor (a
    1,000-token embedding) takes int8 instead, and the model loads and runs."""
    eng = load(ggufs["llama-v1000"], "q4_0", "int4")
    try:
        assert eng.loaded.model.embed.quant == "int8"
        assert eng.loaded.model.layers[0].qkv.quant == "int4"
    finally:
        eng.close()

"""Build a ready transformers model and tokenizer from a ModelSpec and RawTensors.

The model is created on the meta device (accelerate's ``init_empty_weights``), the
converted tensors are assigned (``load_state_dict(..., assign=True)``) so no second
copy of the weights exists, embeddings are tied as the config says, and the model is
put in eval mode on the requested device.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from omax.engine import weights
from omax.engine.spec import ModelSpec
from omax.errors import EngineError
from omax.sharding.tensors import RawTensor

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A built model and tokenizer. ``spec`` is the spec it was built from less its
    ``tokenizer_json`` (``lean``): the tokenizer holds what it said, and the JSON text
    itself (33 MB for Gemma 3's 262k tokens) would stay resident as long as the model."""

    model: Any  # a transformers PreTrainedModel (attribute access is untyped in torch)
    tokenizer: Any  # transformers.PreTrainedTokenizerFast
    spec: ModelSpec
    load_duration_ns: int
    device: torch.device
    dtype: torch.dtype

    @property
    def eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        eos = self.spec.config.get("eos_token_id")
        for e in eos if isinstance(eos, list) else [eos]:
            if isinstance(e, int):
                ids.add(e)
        tok = self.tokenizer
        if tok.eos_token_id is not None:
            ids.add(int(tok.eos_token_id))
        for name in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>"):
            tid = tok.convert_tokens_to_ids(name)
            if isinstance(tid, int) and tid != tok.unk_token_id and tid is not None:
                ids.add(tid)
        return ids


def lean(spec: ModelSpec) -> ModelSpec:
    """``spec`` without its tokenizer JSON, once a tokenizer is built from it."""
    return dataclasses.replace(spec, tokenizer_json="")


def build_tokenizer(spec: ModelSpec):
    """A ``PreTrainedTokenizerFast`` from the spec's tokenizer.json content.

    It reads the JSON from a file: given a ``tokenizer_object`` transformers deep-copies
    it, which for a large vocabulary (gemma's 262k tokens) is a slow copy and a second
    copy's memory while loading."""
    import tempfile

    from transformers import PreTrainedTokenizerFast

    tc = spec.tokenizer_config
    kwargs = {
        k: v
        for k, v in tc.items()
        if k in ("bos_token", "eos_token", "unk_token", "pad_token", "model_max_length")
        and isinstance(v, str | int)
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", encoding="utf-8") as f:
        f.write(spec.tokenizer_json)
        f.flush()
        tok = PreTrainedTokenizerFast(tokenizer_file=f.name, **kwargs)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def _model_class(spec: ModelSpec):
    import transformers

    archs = spec.config.get("architectures") or []
    for arch in archs:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    if spec.is_generative:
        return transformers.AutoModelForCausalLM
    return transformers.AutoModel


def build_config(spec: ModelSpec):
    from transformers import AutoConfig

    cfg = dict(spec.config)
    model_type = cfg.pop("model_type", None)
    if model_type is None:
        raise EngineError("model config has no model_type")
    for k in ("_model_name_or_path", "transformers_version"):
        cfg.pop(k, None)
    return AutoConfig.for_model(model_type, **cfg)


def load_model(
    spec: ModelSpec,
    tensors: Iterable[RawTensor],
    *,
    device: str = "cpu",
    dtype: str = "float32",
) -> LoadedModel:
    """Build, fill and return the model; ``load_duration_ns`` is measured here."""
    from accelerate import init_empty_weights

    start = time.perf_counter_ns()
    tdtype = weights.torch_dtype(dtype)
    dev = torch.device(device)
    config = build_config(spec)
    cls = _model_class(spec)
    with init_empty_weights(include_buffers=False):
        if hasattr(cls, "from_config"):
            model = cls.from_config(config, dtype=tdtype, attn_implementation="sdpa")
        else:
            model = cls._from_config(config, dtype=tdtype, attn_implementation="sdpa")
    state: dict[str, torch.Tensor] = {}
    for name, t in weights.convert(
        tensors, fmt=spec.format, config=spec.config, model=model, dtype=tdtype
    ):
        state[name] = t.to(dev) if dev.type != "cpu" else t
    tied = bool(getattr(config, "tie_word_embeddings", False))
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if tied and out_emb is not None:
        for k in [k for k in state if k.endswith("lm_head.weight")]:
            del state[k]
    missing, _unexpected = model.load_state_dict(state, strict=False, assign=True)
    del state
    if tied and out_emb is not None:
        model.tie_weights()
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if still_meta:
        raise EngineError(f"weights missing for {still_meta[:5]} (and {len(still_meta)} in all)")
    # Buffers (rotary inv_freq, position ids) were created for real on the CPU.
    model.to(dev)
    model.eval()
    model.requires_grad_(False)
    tokenizer = build_tokenizer(spec)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        spec=lean(spec),
        load_duration_ns=time.perf_counter_ns() - start,
        device=dev,
        dtype=tdtype,
    )


def load_fast(
    spec: ModelSpec,
    tensors: Iterable[RawTensor],
    *,
    device: str = "cpu",
    quant: str = "int4",
    dtype: str = "float32",
    max_ctx: int | None = None,
) -> LoadedModel:
    """Build a ``fastpath.FastDecoder`` straight from the tensor stream.

    Each tensor is dequantised (fp32; GGUF 4-bit blocks stay blocks under "int4"), fused
    and quantised as its layer completes, so the peak holds the quantised model plus
    about one dense layer. A meta-device transformers model supplies only the GGUF ->
    HF name map. Activations are bf16, or ``dtype`` under quant "none". ``max_ctx``
    bounds the positions the rotary tables cover (the model's own length by default).
    """

    from omax.engine.fast_builder import FastBuilder

    start = time.perf_counter_ns()
    tok = _start_tokenizer(spec)
    dev = torch.device(device)
    act = weights.torch_dtype(dtype) if quant == "none" else torch.bfloat16
    config = build_config(spec)
    meta = _meta_model(spec, config)
    builder = FastBuilder(config, quant=quant, act=act, device=dev, max_pos=max_ctx)
    for name, t in weights.convert(
        tensors,
        fmt=spec.format,
        config=spec.config,
        model=meta,
        dtype=torch.float32,
        keep_blocks=builder.quant == "int4",  # the quant this device runs
        row_sources=True,
    ):
        builder.add(name, t)
    del meta
    model = builder.build()
    tokenizer, tok_s = tok.result()
    release_freed_memory()
    took = (time.perf_counter_ns() - start) / 1e9
    logger.info("built the model in %.2f s (its tokenizer %.2f s of it)", took, tok_s)
    return LoadedModel(
        model=model,  # type: ignore[arg-type]
        tokenizer=tokenizer,
        spec=lean(spec),
        load_duration_ns=time.perf_counter_ns() - start,
        device=dev,
        dtype=act,
    )


def _start_tokenizer(spec: ModelSpec) -> concurrent.futures.Future:
    """Build the tokenizer in a thread: ``(tokenizer, seconds)``.

    It builds beside the weights, but ``tokenizers`` holds the GIL while it parses
    (~0.7 s for Gemma 3's 262k tokens and 515k merges): that overlaps only what
    releases it (reading and hashing a streamed tensor, a torch kernel in flight). How
    long it parses depends on the JSON's layout (``gguftokenizer.compact_merges``).
    """
    # transformers' lazy imports are not thread-safe: two threads importing it first
    # at once fail ("cannot import name 'AutoConfig'"), so this thread imports first.
    from transformers import AutoConfig, PreTrainedTokenizerFast  # noqa: F401

    pool = concurrent.futures.ThreadPoolExecutor(1, "omax-tokenizer")
    tok = pool.submit(_timed, build_tokenizer, spec)
    pool.shutdown(wait=False)
    return tok


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    """``fn(*args)`` and the seconds it took."""
    t0 = time.perf_counter()
    return fn(*args), time.perf_counter() - t0


def _meta_model(spec: ModelSpec, config: Any) -> Any:
    """The spec's transformers model with every tensor on the meta device: it supplies
    only the GGUF -> HF name map. (accelerate's ``init_empty_weights`` would make each
    parameter on the CPU first: Gemma 3's embedding alone is 671 MB.)"""
    with torch.device("meta"):
        cls = _model_class(spec)
        make = cls.from_config if hasattr(cls, "from_config") else cls._from_config
        return make(config, dtype=torch.float32)


def release_freed_memory() -> None:
    """Hand the heap a load freed back to the OS (glibc's ``malloc_trim``).

    A load's temporaries (dequantised layers, the tokenizer's JSON) are freed, but
    glibc keeps freed heap pages mapped for reuse, often as much as the model itself,
    counted in the worker's resident memory and in no one's budget. Elsewhere
    (another libc, macOS) a no-op."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass

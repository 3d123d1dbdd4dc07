"""RawTensors from the store -> an HF state dict of torch tensors, one tensor at a time.

GGUF tensors carry gguf names (``blk.0.attn_q.weight``) and may be quantised; they
are dequantised with vectorised torch ops that give gguf-py's values bit for bit
(``dequantize``, ``ggml_blocks``), or kept as 4- or 5-bit blocks for the packed kernels
(``CodeBlocks``), renamed
to HF names with transformers' gguf name map and, for llama-family models, have
llama.cpp's q/k row permutation undone. Safetensors tensors already carry HF names.
bfloat16 arrives as a uint16 view.

Conversion is a generator so the caller holds at most one extra tensor besides the
state dict it is building: no second full copy of the weights.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from omax.engine import ggml_blocks
from omax.errors import EngineError
from omax.sharding.tensors import RawTensor

_FLOAT_TYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def torch_dtype(name: str) -> torch.dtype:
    """``"float32"`` / ``"bfloat16"`` / ``"float16"`` -> torch dtype."""
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            name
        ]
    except KeyError:
        raise EngineError(f"unsupported dtype {name!r}; use float32, bfloat16 or float16") from None


@dataclass(frozen=True)
class CodeBlocks:
    """4- or 5-bit GGUF weights kept as codes: ``w[n, k] = scale[n, g] * codes[n, k] + low[n, g]``.

    ``g = k // 32``; ``codes`` are uint8 in 0..2**bits - 1, ``scale`` and ``low`` float32.
    Every type whose values are exactly one affine map of integer codes per group of
    32 fits:

    - Q4_0 (``w = d * (q - 8)``): ``scale = d``, ``low = -8 d``; Q5_0 likewise with
      ``q - 16``, ``low = -16 d``;
    - Q4_1 and Q5_1 (``w = d * q + m``): ``scale = d``, ``low = m``;
    - Q4_K and Q5_K (eight groups of 32 per 256-superblock, 6-bit ``sc`` and ``mn``
      each, ``w = d * sc * q - dmin * mn``): ``scale = d * sc``, ``low = -dmin * mn``.

    Each ``scale`` and ``low`` is an fp16 times an integer of at most 6 bits, exact in
    float32, and so is ``scale * code``, so ``dequantize`` gives gguf's values: the
    same bits for the ``_1`` and K types, and for Q4_0/Q5_0 the same values except that
    an exact zero is always +0 (gguf gives -0 where ``d < 0``). Row operations
    (llama.cpp's q/k permutation, fusing projections) apply to all alike, so the blocks
    reach the packed kernels unchanged instead of being re-derived from dequantised
    values: 4-bit codes torch's int4 kernel, 5-bit ones the native step's
    (``linear.Lin``, "int5").
    """

    codes: torch.Tensor
    scale: torch.Tensor
    low: torch.Tensor
    bits: int = 4

    GROUP = 32
    FOUR_BIT = ("Q4_0", "Q4_1", "Q4_K")
    FIVE_BIT = ("Q5_0", "Q5_1", "Q5_K")
    TYPES = FOUR_BIT + FIVE_BIT

    @classmethod
    def from_raw(cls, raw: RawTensor) -> CodeBlocks:
        gtype = (raw.ggml_type or "").upper()
        if gtype not in cls.TYPES:
            raise EngineError(
                f"tensor {raw.name}: {gtype or raw.dtype} is not a 4- or 5-bit GGUF type"
            )
        n, k = raw.shape
        codes, scale, low = ggml_blocks.code_fields(gtype, ggml_blocks.blocks(raw, gtype))
        g = k // cls.GROUP
        bits = 5 if gtype in cls.FIVE_BIT else 4
        return cls(codes.reshape(n, k), scale.reshape(n, g), low.reshape(n, g), bits)

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    def map_rows(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> CodeBlocks:
        """Apply the same row operation (permutation, reshape) to codes and parameters."""
        return CodeBlocks(fn(self.codes), fn(self.scale), fn(self.low), self.bits)

    @classmethod
    def cat(cls, parts: list[CodeBlocks]) -> CodeBlocks:
        """Parts fused row-wise; 4-bit codes are 5-bit codes too, so the widest wins."""
        codes, scale, low = (
            torch.cat([getattr(p, f) for p in parts]) for f in ("codes", "scale", "low")
        )
        return cls(codes, scale, low, max(p.bits for p in parts))

    def dequantize(self) -> torch.Tensor:
        n, k = self.codes.shape
        w = self.codes.view(n, -1, self.GROUP).float() * self.scale[..., None]
        return (w + self.low[..., None]).view(n, k)


@dataclass(frozen=True)
class BlockRows:
    """A 2-D GGUF block tensor read a few rows at a time (``rows``): the embedding and
    head, the largest tensors, are re-quantised chunk by chunk (``layouts.quantize_int8``)
    instead of through one full float32 copy (671 MB for Gemma 3's embedding)."""

    raw: RawTensor
    gtype: str

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.raw.shape)

    def rows(self, first: int, n: int) -> torch.Tensor:
        """Rows ``first..first+n-1`` as float32, the bits ``dequantize`` gives."""
        n_rows, k = self.raw.shape
        n = min(n, n_rows - first)
        per_row = k // ggml_blocks.BLOCKS[self.gtype][0]
        b = ggml_blocks.blocks(self.raw, self.gtype)[first * per_row : (first + n) * per_row]
        return ggml_blocks.dequant_blocks(self.gtype, b).reshape(n, k)

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.raw, torch.float32)


def dequantize(raw: RawTensor, dtype: torch.dtype) -> torch.Tensor:
    """Return the tensor ``raw`` stands for, as ``dtype`` with its logical shape.

    GGUF blocks of F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q2_K..Q6_K decode to
    float32 exactly as ``gguf.quants.dequantize`` does (same bits), then round to
    ``dtype``; other block types go through transformers' torch dequantiser (float32,
    checked equal to gguf's on random blocks) or gguf's numpy one.
    """
    gtype = (raw.ggml_type or "").upper()
    if raw.dtype == "bfloat16" or gtype == "BF16":
        t = ggml_blocks.as_torch(raw.data.view(np.uint16)).view(torch.bfloat16)
        return t.reshape(raw.shape).to(dtype)
    if not gtype or gtype in _FLOAT_TYPES:
        t = ggml_blocks.as_torch(raw.data)
        if t.is_floating_point():
            t = t.to(dtype)
        return t.reshape(raw.shape) if raw.shape else t
    if gtype in ggml_blocks.BLOCKS:
        values = ggml_blocks.dequant_blocks(gtype, ggml_blocks.blocks(raw, gtype))
        return values.reshape(raw.shape).to(dtype)
    import gguf

    type_id = gguf.GGMLQuantizationType[gtype].value
    blocks = ggml_blocks.as_torch(raw.data.view(np.uint8)).reshape(-1)
    try:
        from transformers.integrations.gguf.dequant import dequantize as torch_dequant

        values = torch_dequant(blocks, type_id, torch.float32)
    except (ImportError, ValueError, KeyError):
        flat = gguf.quants.dequantize(raw.data.view(np.uint8), gguf.GGMLQuantizationType(type_id))
        values = torch.from_numpy(np.ascontiguousarray(flat))
    return values.reshape(raw.shape).to(dtype)


# transformers model type -> the architecture name llama.cpp writes (and gguf's tables use)
GGUF_ARCH = {
    "cohere": "command-r",
    "mistral": "llama",
    "qwen2_moe": "qwen2moe",
    "qwen3_moe": "qwen3moe",
    "gemma3_text": "gemma3",
    "gpt_oss": "gpt-oss",
}


def gguf_name_map(model: torch.nn.Module, model_type: str) -> dict[str, str]:
    """gguf tensor name -> HF parameter name for ``model`` (may live on the meta device).

    transformers' ``get_gguf_hf_weights_map`` rebuilds gguf's name table once per
    submodule (seconds); one table for the whole state dict is enough for the
    decoder-only families we serve.
    """
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    gguf_type = GGUF_ARCH.get(model_type, model_type)
    arch = next((k for k, v in MODEL_ARCH_NAMES.items() if v == gguf_type), None)
    if arch is None:
        raise EngineError(f"gguf has no architecture named {gguf_type!r}")
    layers: int = model.config.num_hidden_layers  # type: ignore[union-attr,assignment]
    name_map = get_tensor_name_map(arch, layers)
    out: dict[str, str] = {}
    for hf_name in model.state_dict():
        base, suffix = hf_name, ""
        if hf_name.endswith((".weight", ".bias")):
            base, suffix = hf_name.rsplit(".", 1)
            suffix = "." + suffix
        gguf_name = name_map.get_name(base)
        if gguf_name is not None:
            out.setdefault(gguf_name + suffix, hf_name)
    return out


def _processor(config: dict[str, Any]):
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    model_type = config.get("model_type", "")
    # transformers keys its processors by either spelling ("gpt_oss", "qwen2moe")
    cls = TENSOR_PROCESSORS.get(model_type) or TENSOR_PROCESSORS.get(
        GGUF_ARCH.get(model_type, model_type), TensorProcessor
    )
    return cls(config=config)


def _rows(processor: Any, name: str, t: torch.Tensor) -> torch.Tensor:
    return processor.process(weights=t, name=name).weights.contiguous()


# The tensors ``convert`` hands over as ``BlockRows`` (every fast-path family's
# processor leaves their rows as they are).
ROW_SOURCES = ("model.embed_tokens.weight", "lm_head.weight")


def convert(
    raw_tensors: Iterable[RawTensor],
    *,
    fmt: str,
    config: dict[str, Any],
    model: torch.nn.Module,
    dtype: torch.dtype = torch.float32,
    keep_blocks: bool = False,
    row_sources: bool = False,
) -> Iterator[tuple[str, Any]]:
    """Yield ``(hf_name, tensor)`` for every tensor the model knows.

    Tensors the model has no parameter for (e.g. ``rope_freqs``) are skipped. With
    ``keep_blocks`` 2-D GGUF tensors of the types ``CodeBlocks`` holds (Q4_0, Q4_1,
    Q4_K, Q5_0, Q5_1, Q5_K) arrive as ``CodeBlocks`` instead of dense values; with ``row_sources`` the
    embedding and head in other block types arrive as ``BlockRows``.
    """
    if fmt == "gguf":
        name_map = gguf_name_map(model, config.get("model_type", ""))
        processor = _processor(config)
        for raw in raw_tensors:
            hf_name = name_map.get(raw.name)
            if hf_name is None:
                continue
            if (
                keep_blocks
                and (raw.ggml_type or "").upper() in CodeBlocks.TYPES
                and len(raw.shape) == 2
            ):
                blocks = CodeBlocks.from_raw(raw)
                yield hf_name, blocks.map_rows(functools.partial(_rows, processor, raw.name))
                continue
            gtype = (raw.ggml_type or "").upper()
            if (
                row_sources
                and hf_name in ROW_SOURCES
                and gtype in ggml_blocks.BLOCKS
                and len(raw.shape) == 2
            ):
                yield hf_name, BlockRows(raw, gtype)  # no processor changes these rows
                continue
            t = dequantize(raw, dtype)
            t = processor.process(weights=t, name=raw.name).weights
            yield hf_name, t.contiguous()
    elif fmt == "safetensors":
        known = set(model.state_dict().keys())
        prefix = getattr(model, "base_model_prefix", "")
        for raw in raw_tensors:
            name = raw.name
            if name not in known and prefix:
                if name.startswith(prefix + ".") and name[len(prefix) + 1 :] in known:
                    name = name[len(prefix) + 1 :]
                elif f"{prefix}.{name}" in known:
                    name = f"{prefix}.{name}"
            if name not in known:
                continue
            yield name, dequantize(raw, dtype)
    else:
        raise EngineError(f"unknown weights format {fmt!r}")

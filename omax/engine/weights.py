"""RawTensors from the store -> an HF state dict of torch tensors, one tensor at a time.

GGUF tensors carry gguf names (``blk.0.attn_q.weight``) and may be quantised; they
are dequantised with vectorised torch ops that give gguf-py's values bit for bit
(``dequantize``), or kept as 4- or 5-bit blocks for the packed kernels (``CodeBlocks``), renamed
to HF names with transformers' gguf name map and, for llama-family models, have
llama.cpp's q/k row permutation undone. Safetensors tensors already carry HF names.
bfloat16 arrives as a uint16 view.

Conversion is a generator so the caller holds at most one extra tensor besides the
state dict it is building: no second full copy of the weights.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

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
        codes, scale, low = _code_fields(gtype, _blocks(raw, gtype))
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


def _as_torch(array: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # read-only memmaps: we never write to them
        return torch.from_numpy(np.ascontiguousarray(array))


# ggml type -> (values, bytes) per block, for the types decoded below (ggml-common.h).
_BLOCKS = {
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "Q5_0": (32, 22),
    "Q5_1": (32, 24),
    "Q8_0": (32, 34),
    "Q2_K": (256, 84),
    "Q3_K": (256, 110),
    "Q4_K": (256, 144),
    "Q5_K": (256, 176),
    "Q6_K": (256, 210),
}


def _blocks(raw: RawTensor, gtype: str) -> torch.Tensor:
    """``raw``'s bytes as ``[blocks, bytes per block]`` uint8 (no copy when contiguous)."""
    return _as_torch(raw.data.view(np.uint8)).reshape(-1, _BLOCKS[gtype][1])


def _half(blocks: torch.Tensor, at: int) -> torch.Tensor:
    """The fp16 field at byte ``at`` of every block, as float32 ``[blocks, 1]`` (exact)."""
    return blocks[:, at : at + 2].contiguous().view(torch.float16).float()


def _fields(data: torch.Tensor, width: int, bits: int) -> torch.Tensor:
    """Unpack ``bits``-wide fields, ggml's layout: ``data [nb, n]`` is read as runs of
    ``width`` bytes; a run yields ``width`` values from its lowest field, then ``width``
    from the next, and so on. ``[nb, n * 8 / bits]`` uint8."""
    nb = data.shape[0]
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8).view(1, 1, -1, 1)
    out = (data.reshape(nb, -1, 1, width) >> shifts) & ((1 << bits) - 1)
    return out.reshape(nb, -1)


def _k_scales(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: 12 bytes -> eight 6-bit scales and eight 6-bit mins (get_scale_min_k4)."""
    sc = torch.cat([s[:, 0:4] & 63, (s[:, 8:12] & 15) | ((s[:, 0:4] >> 6) << 4)], dim=1)
    mn = torch.cat([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], dim=1)
    return sc.float(), mn.float()


def _code_fields(gtype: str, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """4- and 5-bit blocks -> ``(codes [nb, values], scale [nb, groups], low [nb, groups])``."""
    if gtype == "Q4_0":
        d = _half(b, 0)
        return _fields(b[:, 2:], 16, 4), d, d * -8.0
    if gtype == "Q4_1":
        return _fields(b[:, 4:], 16, 4), _half(b, 0), _half(b, 2)
    if gtype in ("Q5_0", "Q5_1"):
        at = 2 if gtype == "Q5_0" else 4
        q = _fields(b[:, at + 4 :], 16, 4) | (_fields(b[:, at : at + 4], 1, 1) << 4)
        d = _half(b, 0)
        return q, d, (d * -16.0 if gtype == "Q5_0" else _half(b, 2))
    sc, mn = _k_scales(b[:, 4:16])
    if gtype == "Q5_K":
        q = _fields(b[:, 48:176], 32, 4) | (_fields(b[:, 16:48], 32, 1) << 4)
    else:
        q = _fields(b[:, 16:], 32, 4)
    return q, _half(b, 0) * sc, -(_half(b, 2) * mn)


def _affine(
    q: torch.Tensor, scale: torch.Tensor, low: torch.Tensor | None, group: int
) -> torch.Tensor:
    """``q * scale + low`` per group of ``group`` values, each op rounded to float32.

    ``q`` is integer ``[nb, values]``, ``scale``/``low`` float32 ``[nb, groups]``. These
    are gguf's numpy ops in gguf's order; ``x + (-y)`` is ``x - y`` bit for bit, so a
    negated ``low`` gives gguf's ``d * q - dmin * m``.
    """
    nb = q.shape[0]
    w = q.to(torch.float32).view(nb, -1, group).mul_(scale.view(nb, -1, 1))
    if low is not None:
        w.add_(low.view(nb, -1, 1))
    return w.view(nb, -1)


def _signed(q: torch.Tensor, offset: int) -> torch.Tensor:
    """uint8 ``q`` -> int8 ``q - offset`` (uint8 arithmetic wraps; the result fits)."""
    return (q - offset).view(torch.int8)


def _dequant_blocks(gtype: str, b: torch.Tensor) -> torch.Tensor:
    """Blocks of ``gtype`` -> float32 ``[nb, values]``, the same ops in the same order as
    ``gguf.quants`` (so the same bits); the integer unpacking is exact either way."""
    if gtype == "Q8_0":
        return _affine(b[:, 2:].view(torch.int8), _half(b, 0), None, 32)
    if gtype == "Q4_0":
        return _affine(_signed(_fields(b[:, 2:], 16, 4), 8), _half(b, 0), None, 32)
    if gtype in ("Q4_1", "Q4_K", "Q5_1", "Q5_K"):
        return _affine(*_code_fields(gtype, b), 32)
    if gtype == "Q5_0":
        q, d, _ = _code_fields(gtype, b)
        return _affine(_signed(q, 16), d, None, 32)
    if gtype == "Q2_K":
        s = b[:, 0:16]
        scale, low = _half(b, 80) * (s & 15).float(), -(_half(b, 82) * (s >> 4).float())
        return _affine(_fields(b[:, 16:80], 32, 2), scale, low, 16)
    if gtype == "Q3_K":
        s = b[:, 96:108]
        sc = _fields(s[:, 0:8], 8, 4) | (_fields(s[:, 8:12], 4, 2) << 4)
        scale = _half(b, 108) * _signed(sc, 32).float()
        # the high bit is an inverted borrow: 4 is subtracted where the mask bit is clear
        q = _signed(_fields(b[:, 32:96], 32, 2) | (_fields(b[:, 0:32], 32, 1) << 2), 4)
        return _affine(q, scale, None, 16)
    if gtype == "Q6_K":
        scale = _half(b, 208) * b[:, 192:208].view(torch.int8).float()
        q = _fields(b[:, 0:128], 64, 4) | (_fields(b[:, 128:192], 32, 2) << 4)
        return _affine(_signed(q, 32), scale, None, 16)
    raise KeyError(gtype)


@dataclass(frozen=True)
class BlockRows:
    """A 2-D GGUF block tensor read a few rows at a time (``rows``): the embedding and
    head, the largest tensors, are re-quantised chunk by chunk (``linear.quantize_int8``)
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
        per_row = k // _BLOCKS[self.gtype][0]
        b = _blocks(self.raw, self.gtype)[first * per_row : (first + n) * per_row]
        return _dequant_blocks(self.gtype, b).reshape(n, k)

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
        t = _as_torch(raw.data.view(np.uint16)).view(torch.bfloat16)
        return t.reshape(raw.shape).to(dtype)
    if not gtype or gtype in _FLOAT_TYPES:
        t = _as_torch(raw.data)
        if t.is_floating_point():
            t = t.to(dtype)
        return t.reshape(raw.shape) if raw.shape else t
    if gtype in _BLOCKS:
        values = _dequant_blocks(gtype, _blocks(raw, gtype))
        return values.reshape(raw.shape).to(dtype)
    import gguf

    type_id = gguf.GGMLQuantizationType[gtype].value
    blocks = _as_torch(raw.data.view(np.uint8)).reshape(-1)
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
            if row_sources and hf_name in ROW_SOURCES and gtype in _BLOCKS and len(raw.shape) == 2:
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

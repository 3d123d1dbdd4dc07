"""RawTensors from the store -> an HF state dict of torch tensors, one tensor at a time.

GGUF tensors carry gguf names (``blk.0.attn_q.weight``) and may be quantised; they
are dequantised with torch ops (transformers' GGUF dequantiser, falling back to
gguf-py's numpy one), renamed to HF names with transformers' gguf name map and, for
llama-family models, have llama.cpp's q/k row permutation undone. Safetensors tensors
already carry HF names. bfloat16 arrives as a uint16 view.

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
class Q4Blocks:
    """GGUF Q4_1 weights kept as their blocks: ``w[n, k] = scale[n, g] * codes[n, k] + low[n, g]``.

    ``g = k // 32``; ``codes`` are uint8 in 0..15, ``scale`` and ``low`` the blocks' fp16
    ``d`` and ``m`` widened to float32 (exact). Row operations (llama.cpp's q/k
    permutation, fusing projections) apply to all three alike, so the blocks reach the
    int4 kernel unchanged instead of being re-derived from dequantised values.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    low: torch.Tensor

    GROUP = 32

    @classmethod
    def from_raw(cls, raw: RawTensor) -> Q4Blocks:
        n, k = raw.shape
        blocks = _as_torch(raw.data.view(np.uint8)).reshape(-1, 20)
        d = blocks[:, 0:2].contiguous().view(torch.float16).float()
        m = blocks[:, 2:4].contiguous().view(torch.float16).float()
        qs = blocks[:, 4:]
        codes = torch.cat([qs & 0xF, qs >> 4], dim=1)  # ggml: low nibbles first
        g = k // cls.GROUP
        return cls(codes.reshape(n, k), d.reshape(n, g), m.reshape(n, g))

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    def map_rows(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Q4Blocks:
        """Apply the same row operation (permutation, reshape) to codes and parameters."""
        return Q4Blocks(fn(self.codes), fn(self.scale), fn(self.low))

    @classmethod
    def cat(cls, parts: list[Q4Blocks]) -> Q4Blocks:
        return cls(*(torch.cat([getattr(p, f) for p in parts]) for f in ("codes", "scale", "low")))

    def dequantize(self) -> torch.Tensor:
        n, k = self.codes.shape
        w = self.codes.view(n, -1, self.GROUP).float() * self.scale[..., None]
        return (w + self.low[..., None]).view(n, k)


def _as_torch(array: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # read-only memmaps: we never write to them
        return torch.from_numpy(np.ascontiguousarray(array))


def dequantize(raw: RawTensor, dtype: torch.dtype) -> torch.Tensor:
    """Return the tensor ``raw`` stands for, as ``dtype`` with its logical shape."""
    gtype = (raw.ggml_type or "").upper()
    if raw.dtype == "bfloat16" or gtype == "BF16":
        t = _as_torch(raw.data.view(np.uint16)).view(torch.bfloat16)
        return t.reshape(raw.shape).to(dtype)
    if not gtype or gtype in _FLOAT_TYPES:
        t = _as_torch(raw.data)
        if t.is_floating_point():
            t = t.to(dtype)
        return t.reshape(raw.shape) if raw.shape else t
    import gguf

    type_id = gguf.GGMLQuantizationType[gtype].value
    blocks = _as_torch(raw.data.view(np.uint8)).reshape(-1)
    try:
        from transformers.integrations.gguf.dequant import dequantize as torch_dequant

        values = torch_dequant(blocks, type_id, dtype)
    except (ImportError, ValueError, KeyError):
        flat = gguf.quants.dequantize(raw.data.view(np.uint8), gguf.GGMLQuantizationType(type_id))
        values = torch.from_numpy(np.ascontiguousarray(flat)).to(dtype)
    return values.reshape(raw.shape)


def gguf_name_map(model: torch.nn.Module, model_type: str) -> dict[str, str]:
    """gguf tensor name -> HF parameter name for ``model`` (may live on the meta device).

    transformers' ``get_gguf_hf_weights_map`` rebuilds gguf's name table once per
    submodule (seconds); one table for the whole state dict is enough for the
    decoder-only families we serve.
    """
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    aliases = {
        "cohere": "command-r",
        "qwen2_moe": "qwen2moe",
        "qwen3_moe": "qwen3moe",
        "gemma3_text": "gemma3",
        "gpt_oss": "gpt-oss",
    }
    gguf_type = aliases.get(model_type, model_type)
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

    cls = TENSOR_PROCESSORS.get(config.get("model_type", ""), TensorProcessor)
    if config.get("model_type") in ("mistral", "llama"):
        cls = TENSOR_PROCESSORS["llama"]
    return cls(config=config)


def _rows(processor: Any, name: str, t: torch.Tensor) -> torch.Tensor:
    return processor.process(weights=t, name=name).weights.contiguous()


def convert(
    raw_tensors: Iterable[RawTensor],
    *,
    fmt: str,
    config: dict[str, Any],
    model: torch.nn.Module,
    dtype: torch.dtype = torch.float32,
    keep_q4_1: bool = False,
) -> Iterator[tuple[str, Any]]:
    """Yield ``(hf_name, tensor)`` for every tensor the model knows.

    Tensors the model has no parameter for (e.g. ``rope_freqs``) are skipped. With
    ``keep_q4_1`` 2-D GGUF Q4_1 tensors arrive as ``Q4Blocks`` instead of dense values.
    """
    if fmt == "gguf":
        name_map = gguf_name_map(model, config.get("model_type", ""))
        processor = _processor(config)
        for raw in raw_tensors:
            hf_name = name_map.get(raw.name)
            if hf_name is None:
                continue
            if keep_q4_1 and (raw.ggml_type or "").upper() == "Q4_1" and len(raw.shape) == 2:
                q4 = Q4Blocks.from_raw(raw).map_rows(functools.partial(_rows, processor, raw.name))
                yield hf_name, q4
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

"""The memory estimate: bytes a model reserves on an inference slot. Pure.

Placement compares this number with what a slot has free; it counts the weights
as the engine holds them (quantised tensors at the engine's dtype, integer tensors
at 8 bytes) plus one sequence's KV cache at the requested context.
"""

from __future__ import annotations

import math
from typing import Any

DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
_FLOATS = ("float32", "float16", "bfloat16")


def estimate_memory(config: dict, weight_bytes: int, num_ctx: int, dtype_bytes: int = 4) -> int:
    """Bytes a model needs loaded: dequantised weights plus its KV cache for num_ctx."""
    layers = int(config.get("num_hidden_layers", 0) or 0)
    hidden = int(config.get("hidden_size", 0) or 0)
    heads = int(config.get("num_attention_heads", 1) or 1)
    kv_heads = int(config.get("num_key_value_heads", heads) or heads)
    head_dim = int(config.get("head_dim", 0) or (hidden // heads if heads else 0))
    kv = 2 * layers * kv_heads * head_dim * num_ctx * dtype_bytes
    return int(weight_bytes + kv)


def model_memory(manifest: Any, num_ctx: int, dtype: str) -> int:
    """Bytes a model needs on a slot: weights as loaded plus the KV cache for num_ctx."""
    per = DTYPE_BYTES.get(dtype, 4)
    weights = 0
    for t in manifest.tensors:
        n = math.prod(t.shape) if t.shape else 1
        weights += n * (per if t.ggml_type or t.dtype in _FLOATS else 8)
    return estimate_memory(manifest.config, weights, num_ctx, per)

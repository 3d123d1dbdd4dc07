"""The memory estimate: bytes a model reserves on an inference slot. Pure.

Placement compares this number with what a slot has free. It counts what the engine
allocates: the weights as ``omax.engine.quant`` holds them (4-bit GGUF blocks packed
as int4, other matrices int8, vectors fp32; or every tensor at the engine's dtype
with quant ``none``) and the KV cache of every batch row, ``parallel`` sequences
(``omax.engine.parallel``) plus the prefix-cache rows, each ``num_ctx`` tokens long,
allocated at load. What the models already loaded reserve on a slot
(``reserved_by_slot``) and what a GPU reports free now (``with_live_capacity``) are
counted here too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omax.config import Settings

DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
# omax.engine.prefix-cache -> the Engine's ``prefix_rows`` (None: the engine decides)
PREFIX_ROWS = {"auto": None, "on": 4, "off": 0}
_FLOATS = ("float32", "float16", "bfloat16")
# repacked for the int4 kernel (docs/configuration.md). Q5_0/Q5_1/Q5_K count as int8:
# they take 0.75 bytes a weight where a worker has the native step built, int8 where
# not, and placement does not know which (the larger is the safe guess)
_INT4_BLOCKS = ("Q4_0", "Q4_1", "Q4_K")
# bytes per weight once loaded: int4 with a bf16 scale and zero per 32; int8 with a
# scale per row (counted as a small overhead); bf16
_PACKED = {"int4": 0.625, "int8": 1.03, "bf16": 2.0}


def trained_context(config: dict) -> int:
    """The context a model was trained for (its ``max_position_embeddings``)."""
    return int(config.get("max_position_embeddings") or 2048)


def granted_context(config: dict, requested: int, default: int) -> int:
    """The context a model is loaded with: what the loading request asked for, at
    least ``omax.engine.context-length``, at most what the model was trained for."""
    return max(1, min(max(requested, default), trained_context(config)))


def kv_bytes_per_token(config: dict, dtype_bytes: int) -> int:
    layers = int(config.get("num_hidden_layers", 0) or 0)
    hidden = int(config.get("hidden_size", 0) or 0)
    heads = int(config.get("num_attention_heads", 1) or 1)
    kv_heads = int(config.get("num_key_value_heads", heads) or heads)
    head_dim = int(config.get("head_dim", 0) or (hidden // heads if heads else 0))
    return 2 * layers * kv_heads * head_dim * dtype_bytes


def estimate_memory(
    config: dict, weight_bytes: int, num_ctx: int, dtype_bytes: int = 4, rows: int = 1
) -> int:
    """Bytes a model needs loaded: its weights plus ``rows`` KV rows of ``num_ctx``."""
    return int(weight_bytes + kv_bytes_per_token(config, dtype_bytes) * num_ctx * rows)


def prefix_rows(prefix_cache: str, quant: str) -> int:
    """Prefix-cache rows the engine will allocate (its ``auto`` is on only unquantised)."""
    rows = PREFIX_ROWS[prefix_cache]
    return rows if rows is not None else (4 if quant == "none" else 0)


def _weight_bytes(t: Any, quant: str, per: int) -> float:
    n = math.prod(t.shape) if t.shape else 1
    if not (t.ggml_type or t.dtype in _FLOATS):
        return n * 8  # integer tensors (position ids and the like)
    if quant == "none" or len(t.shape or ()) < 2:
        return n * (per if quant == "none" else 4)
    if quant == "int4" and t.ggml_type in _INT4_BLOCKS:
        return n * _PACKED["int4"]
    return n * _PACKED["bf16" if quant == "bf16" else "int8"]


def model_memory(
    manifest: Any,
    num_ctx: int,
    dtype: str,
    quant: str = "none",
    parallel: int = 1,
    prefix_rows: int = 0,
) -> int:
    """Bytes a model needs on a slot: weights as loaded plus the KV cache of
    ``parallel + prefix_rows`` rows of ``num_ctx`` tokens (bf16 unless quant is none)."""
    per = DTYPE_BYTES.get(dtype, 4)
    weights = sum(_weight_bytes(t, quant, per) for t in manifest.tensors)
    kv_dtype = per if quant == "none" else 2
    return estimate_memory(manifest.config, int(weights), num_ctx, kv_dtype, parallel + prefix_rows)


def load_memory(manifest: Any, num_ctx: int, cfg: Settings) -> int:
    """``model_memory`` of ``manifest`` loaded with ``num_ctx`` (the granted context)
    as ``cfg``'s engine settings load it: dtype, quant, parallel and prefix cache."""
    rows = prefix_rows(cfg.prefix_cache, cfg.engine_quant)
    return model_memory(manifest, num_ctx, cfg.engine_dtype, cfg.engine_quant, cfg.parallel, rows)


def reserved_by_slot(loaded: Iterable[Any], worker: str) -> dict[str, int]:
    """Bytes the ``loaded`` models (``omax.plugins.state.Loaded``) reserve on each
    slot of ``worker``, by slot id."""
    out: dict[str, int] = {}
    for m in loaded:
        if m.worker == worker:
            out[m.slot] = out.get(m.slot, 0) + m.memory
    return out


def with_live_capacity(
    slots: tuple[Any, ...], live: list[dict[str, Any]] | None, reserved: dict[str, int]
) -> tuple[Any, ...]:
    """``slots`` (``omax.plugins.state.Slot``) with the capacity the devices report now.

    A GPU's ``live`` free memory (its worker's last heartbeat) already excludes what
    omax's own models there use, so what omax may still reserve on it is at most
    that free memory plus what its models reserve (``reserved``, by slot id): memory
    another process took since the worker started counts against the slot. A slot
    with no live report, or a CPU slot, keeps its declared capacity."""
    from dataclasses import replace

    now = {d.get("id"): d for d in live or () if isinstance(d, dict)}
    out = []
    for s in slots:
        d = now.get(s.id)
        if s.device != "cuda" or d is None or "memory_free" not in d:
            out.append(s)
            continue
        usable = int(d["memory_free"]) + reserved.get(s.id, 0)
        out.append(
            replace(
                s,
                memory_total=min(s.memory_total, usable),
                memory_free=int(d["memory_free"]),
                utilization=float(d.get("utilization", s.utilization)),
            )
        )
    return tuple(out)

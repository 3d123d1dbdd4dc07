"""What differs between the decoder families the fast path runs, as plain data.

Every family on the fast path is the same pre-norm decoder (embed → N × [attention,
MLP] with residual adds → norm → head); ``Arch`` names how one family departs from
llama's defaults, read from its Hugging Face config (a plain dict), so
``omax.engine.fastpath`` holds one decoder and no class per family:

============== ====================================================================
field          families that set it
============== ====================================================================
norm_offset    gemma2, gemma3: RMSNorm scales by ``1 + w`` (baked into ``w`` at load)
sandwich       gemma2, gemma3: norms after attention and after the MLP, before the
               residual add, and a pre-MLP norm of its own
qk_norm        qwen3, gemma3: per-head RMSNorm of q and k before the rotary embedding
qkv_bias       qwen2 (always), llama/mistral with ``attention_bias``
embed_scale    gemma2, gemma3: embeddings times ``sqrt(hidden)``
attn_scale     gemma2, gemma3: ``query_pre_attn_scalar ** -0.5`` (else ``head_dim``)
attn_softcap   gemma2: ``tanh`` soft-capping of attention scores
final_softcap  gemma2: ``tanh`` soft-capping of the logits
act            gemma2, gemma3: tanh-approximated GELU; silu elsewhere
windows        per layer: a sliding window of keys (mistral, gemma2/3 local layers,
               phi3 and qwen2 when configured) or None (every key)
rope           per layer: which rotary table (gemma3: local and global ones)
rot_dim        phi3 variants with ``partial_rotary_factor`` < 1
tied           the head shares the embedding's weights
============== ====================================================================

Anything else transformers can build runs on the generic path
(``omax.engine.generic``). This module imports neither torch nor transformers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omax.errors import EngineError

FAST_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3")
GEMMA = ("gemma2", "gemma3_text")
ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh"}


@dataclass(frozen=True)
class Arch:
    """One decoder family's shape and departures from llama (see the module table)."""

    model_type: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    eps: float
    norm_offset: float = 0.0
    sandwich: bool = False
    qk_norm: bool = False
    qkv_bias: bool = False
    embed_scale: float = 1.0
    attn_scale: float = 0.0
    attn_softcap: float | None = None
    final_softcap: float | None = None
    act: str = "silu"
    windows: tuple[int | None, ...] = ()
    rope: tuple[str, ...] = ()
    rot_dim: int = 0
    tied: bool = False


def fast_family(config: dict[str, Any]) -> bool:
    """Whether the fast path runs this config (else the generic path does)."""
    try:
        arch_of(config)
    except EngineError:
        return False
    return True


def arch_of(config: dict[str, Any]) -> Arch:
    """The ``Arch`` of an HF config dict; ``EngineError`` names what the fast path lacks."""
    mt = config.get("model_type")
    if mt not in FAST_FAMILIES:
        raise EngineError(f"the fast path does not cover model_type {mt!r}")
    if config.get("mlp_bias"):
        raise EngineError(f"{mt}: MLP biases are not on the fast path")
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    layers = int(config["num_hidden_layers"])
    act_name = config.get("hidden_activation") or config.get("hidden_act") or "silu"
    act = ACTIVATIONS.get(act_name)
    if act is None:
        raise EngineError(f"{mt}: activation {act_name!r} is not on the fast path")
    gemma = mt in GEMMA
    scalar = config.get("query_pre_attn_scalar") if gemma else None
    rope_params = config.get("rope_parameters") or {}
    partial = float(
        rope_params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)) or 1.0
    )
    rot_dim = int(head_dim * partial)
    if rot_dim % 2:
        raise EngineError(f"{mt}: odd rotary dimension {rot_dim}")
    return Arch(
        model_type=mt,
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=head_dim,
        eps=float(config.get("rms_norm_eps", 1e-6)),
        norm_offset=1.0 if gemma else 0.0,
        sandwich=gemma,
        qk_norm=mt in ("qwen3", "gemma3_text"),
        qkv_bias=mt == "qwen2" or bool(config.get("attention_bias")),
        embed_scale=math.sqrt(hidden) if gemma else 1.0,
        attn_scale=float(scalar) ** -0.5 if scalar else head_dim**-0.5,
        attn_softcap=_cap(config.get("attn_logit_softcapping")) if gemma else None,
        final_softcap=_cap(config.get("final_logit_softcapping")) if gemma else None,
        act=act,
        windows=_windows(config, layers),
        rope=_rope_kinds(config, layers),
        rot_dim=rot_dim,
        tied=bool(config.get("tie_word_embeddings", gemma)),
    )


def _cap(value: Any) -> float | None:
    return float(value) if value else None


def _layer_types(config: dict[str, Any], layers: int) -> list[str]:
    types = config.get("layer_types")
    if isinstance(types, list | tuple) and len(types) == layers:
        return [str(t) for t in types]
    return ["full_attention"] * layers


def _windows(config: dict[str, Any], layers: int) -> tuple[int | None, ...]:
    """Each layer's sliding window, as transformers applies it for this family."""
    window = config.get("sliding_window")
    mt = config.get("model_type")
    if not window:
        return (None,) * layers
    if mt in ("mistral", "phi3"):  # every layer when configured
        return (int(window),) * layers
    types = _layer_types(config, layers)
    return tuple(int(window) if t == "sliding_attention" else None for t in types)


def _rope_kinds(config: dict[str, Any], layers: int) -> tuple[str, ...]:
    """Each layer's key into ``rope_parameters`` ("" for a single shared table)."""
    params = config.get("rope_parameters") or {}
    types = _layer_types(config, layers)
    if all(isinstance(params.get(t), dict) for t in set(types)):
        return tuple(types)
    return ("",) * layers

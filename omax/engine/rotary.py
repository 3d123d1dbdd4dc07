"""Rotary embedding tables for the fast path, one per kind of layer.

A table is complex64 ``[max_pos, head_dim / 2]``: ``scaling * e^(i * pos * inv_freq)``
for the rotated pairs and ``1`` for the dimensions a partial rotary leaves alone, so
rotating a head is one complex multiply over its interleaved pairs. The frequencies
and scaling come from transformers' own rope functions for the config (default,
linear, dynamic, yarn, longrope, llama3), so every scaling variant follows
transformers; longrope takes its short factors (contexts up to the original length).
"""

from __future__ import annotations

from typing import Any

import torch

from omax.engine.arch import Arch
from omax.errors import EngineError


def inv_freq(hf_config: Any, arch: Arch, kind: str = "") -> tuple[torch.Tensor, float]:
    """``(inv_freq [rot_dim / 2], attention scaling)`` of the layers of ``kind``."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = dict(getattr(hf_config, "rope_parameters", None) or {})
    if kind:
        params = dict(params.get(kind) or {})
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type == "default":
        theta = float(params.get("rope_theta") or getattr(hf_config, "rope_theta", None) or 1e4)
        dim = arch.rot_dim
        inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        return inv, 1.0
    fn = ROPE_INIT_FUNCTIONS.get(rope_type)
    if fn is None:
        raise EngineError(f"rope type {rope_type!r} is not supported")
    inv, scaling = fn(hf_config, None, layer_type=kind or None)
    return inv.float(), float(scaling)


def rotary_tables(hf_config: Any, arch: Arch, max_pos: int) -> dict[str, torch.Tensor]:
    """A table for each rope kind the layers use (``arch.rope``)."""
    half = arch.head_dim // 2
    tables = {}
    for kind in sorted(set(arch.rope)):
        inv, scaling = inv_freq(hf_config, arch, kind)
        if inv.shape[0] * 2 != arch.rot_dim:
            raise EngineError(f"rotary frequencies {inv.shape[0]} do not fit {arch.rot_dim} dims")
        ang = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv)
        rot = torch.polar(torch.full_like(ang, scaling), ang)
        table = torch.ones(max_pos, half, dtype=torch.complex64)
        table[:, : inv.shape[0]] = rot
        tables[kind] = table
    return tables


def interleave_perm(head_dim: int, rot_dim: int) -> torch.Tensor:
    """Within a head: HF's rotate-half order -> interleaved pairs over the rotated dims
    (the GGUF/Meta order, where rotation is a complex multiply); the rest stay put."""
    half = torch.arange(rot_dim // 2)
    pairs = torch.stack([half, half + rot_dim // 2], dim=-1).reshape(-1)
    return torch.cat([pairs, torch.arange(rot_dim, head_dim)])

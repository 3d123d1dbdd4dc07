"""Building a ``FastDecoder`` from HF-named tensors as the store streams them.

Each layer's projections are fused (q/k/v into one, gate/up into one) with q/k rows
permuted to the interleaved rotary order, and quantised as soon as the layer's last
tensor arrives; the dense pieces are then dropped, so a load holds the quantised model
plus at most one layer of dense weights.
"""

from __future__ import annotations

from typing import Any

import torch

from omax.config import settings
from omax.engine import huge_pages
from omax.engine.arch import Arch, arch_of
from omax.engine.fastpath import QUANTS, FastDecoder, Layer
from omax.engine.linear import Lin
from omax.engine.packed import int4_device, int8_chosen, int8_device
from omax.engine.rotary import interleave_perm, rotary_tables
from omax.engine.weights import BlockRows, CodeBlocks
from omax.errors import EngineError


def device_quant(quant: str, device: torch.device) -> str:
    """The quant ``device`` runs: torch's packed int4 kernels need the CPU or CUDA
    8.0+, and int8 is taken only where it measured faster than bf16, the CPU
    (``omax.engine.packed``); elsewhere the same fast path runs dense bf16 weights."""
    if (quant == "int4" and not int4_device(device)) or (
        quant == "int8" and not (int8_chosen(device) and int8_device(device))
    ):
        return "bf16"
    return quant


def _cat(parts: list[Any]) -> torch.Tensor | CodeBlocks:
    """Fuse projections row-wise; 4- and 5-bit blocks stay blocks only if every part is
    one (5-bit if any part is)."""
    if all(isinstance(p, CodeBlocks) for p in parts):
        return CodeBlocks.cat(parts)
    return torch.cat([p.dequantize() if isinstance(p, CodeBlocks) else p for p in parts])


def _take_rows(w: torch.Tensor | CodeBlocks, perm: torch.Tensor) -> torch.Tensor | CodeBlocks:
    if isinstance(w, CodeBlocks):
        return w.map_rows(lambda t: t.index_select(0, perm))
    return w.index_select(0, perm)


class FastBuilder:
    """Collects HF-named tensors one at a time and builds a ``FastDecoder``.

    Each layer's projections are fused and quantised as soon as the layer's last piece
    arrives, and the dense pieces are dropped. ``quant`` "none" keeps dense weights in
    fp32 with fp32 activations (exact); the others run bf16 activations.
    """

    def __init__(
        self,
        hf_config: Any,
        *,
        quant: str,
        act: torch.dtype,
        device: torch.device,
        max_pos: int | None = None,
    ):
        """``max_pos``: positions the rotary tables cover (default: the config's)."""
        if quant not in QUANTS:
            raise EngineError(f"unknown fast quant {quant!r}; use one of {QUANTS}")
        quant = device_quant(quant, device)
        self.cfg = hf_config
        self.arch = arch_of(hf_config.to_dict())
        self.quant, self.act, self.device = quant, act, device
        self.max_pos = max_pos
        a = self.arch
        self.keys = _layer_keys(a)
        self.pending: list[dict[str, Any]] = [{} for _ in range(a.layers)]
        self.layers: list[Layer | None] = [None] * a.layers
        self.other: dict[str, Any] = {}
        # a CPU model's weights go onto huge pages as each layer is done
        # (omax.engine.huge_pages, omax.engine.huge-pages)
        on = device.type == "cpu" and settings().huge_pages == "on" and huge_pages.available()
        self.arena = huge_pages.Arena() if on else None
        perm = interleave_perm(a.head_dim, a.rot_dim)
        heads = torch.arange(a.heads + a.kv_heads).unsqueeze(1) * a.head_dim
        qk = (heads + perm).reshape(-1)
        v = torch.arange(a.kv_heads * a.head_dim) + qk.shape[0]
        self.qkv_perm = torch.cat([qk, v])  # rotate-half rows -> interleaved, per head
        self.head_perm = perm

    def _lin(self, w: torch.Tensor | CodeBlocks | BlockRows, lookups: bool = False) -> Lin:
        """``lookups``: rows are read too (the embedding and head; see ``Lin``)."""
        quant = "none" if self.quant in ("bf16", "none") else self.quant
        if isinstance(w, BlockRows) and (quant == "none" or self.device.type != "cpu"):
            w = w.dequantize()
        if isinstance(w, BlockRows):
            return Lin(w, quant, self.act, lookups=lookups)  # int8, chunk by chunk
        if isinstance(w, CodeBlocks):
            w = w.map_rows(lambda t: t.to(self.device))
        else:
            w = w.to(self.device)
        return Lin(w, quant, self.act, lookups=lookups)

    def _norm(self, w: torch.Tensor) -> torch.Tensor:
        return (w.float() + self.arch.norm_offset).to(self.device, self.act)

    def add(self, name: str, t: torch.Tensor | CodeBlocks) -> None:
        if isinstance(t, CodeBlocks) and self.quant != "int4":
            t = t.dequantize()
        parts = name.split(".")
        if len(parts) > 3 and parts[0] == "model" and parts[1] == "layers":
            i = int(parts[2])
            key = ".".join(parts[3:])
            if key not in self.keys:
                return  # e.g. rotary buffers some checkpoints carry
            p = self.pending[i]
            p[key] = t
            if len(p) == len(self.keys):
                layer = self.layers[i] = self._layer(i, p)
                self.pending[i] = {}
                if self.arena is not None:
                    self.arena.move(layer.tensors())
        else:
            self.other[name] = t

    def _layer(self, i: int, p: dict[str, Any]) -> Layer:
        a = self.arch
        if "self_attn.qkv_proj.weight" in p:
            qkv = p["self_attn.qkv_proj.weight"]
        else:
            qkv = _cat([p[f"self_attn.{x}_proj.weight"] for x in "qkv"])
        if "mlp.gate_up_proj.weight" in p:
            gu = p["mlp.gate_up_proj.weight"]
        else:
            gu = _cat([p["mlp.gate_proj.weight"], p["mlp.up_proj.weight"]])
        bias = None
        if a.qkv_bias:
            bias = torch.cat([p[f"self_attn.{x}_proj.bias"] for x in "qkv"]).float()
            bias = bias[self.qkv_perm].to(self.device, self.act)
        sandwich = a.sandwich
        return Layer(
            ln1=self._norm(p["input_layernorm.weight"]),
            qkv=self._lin(_take_rows(qkv, self.qkv_perm)),
            o=self._lin(p["self_attn.o_proj.weight"]),
            ln2=self._norm(
                p[
                    "pre_feedforward_layernorm.weight"
                    if sandwich
                    else "post_attention_layernorm.weight"
                ]
            ),
            gu=self._lin(gu),
            down=self._lin(p["mlp.down_proj.weight"]),
            bias=bias,
            q_norm=self._norm(p["self_attn.q_norm.weight"][self.head_perm]) if a.qk_norm else None,
            k_norm=self._norm(p["self_attn.k_norm.weight"][self.head_perm]) if a.qk_norm else None,
            post_attn=self._norm(p["post_attention_layernorm.weight"]) if sandwich else None,
            post_ffn=self._norm(p["post_feedforward_layernorm.weight"]) if sandwich else None,
            window=a.windows[i],
            rope=a.rope[i],
        )

    def build(self) -> FastDecoder:
        if any(layer is None for layer in self.layers):
            i = next(i for i, layer in enumerate(self.layers) if layer is None)
            missing = sorted(self.keys - set(self.pending[i]))
            raise EngineError(f"fast path: layer {i} lacks {missing[:4]}")
        emb = self.other.get("model.embed_tokens.weight")
        if emb is None:
            raise EngineError("fast path: model.embed_tokens.weight missing")
        embed = self._lin(emb, lookups=True)
        head_w = self.other.get("lm_head.weight")
        tied = self.arch.tied or head_w is None
        head = embed if tied or head_w is None else self._lin(head_w, lookups=True)
        norm = self.other.get("model.norm.weight")
        if norm is None:
            raise EngineError("fast path: model.norm.weight missing")
        max_pos = int(getattr(self.cfg, "max_position_embeddings", 8192) or 8192)
        max_pos = min(max_pos, self.max_pos or max_pos)
        model = FastDecoder(
            arch=self.arch,
            layers=[layer for layer in self.layers if layer is not None],
            embed=embed,
            norm=self._norm(norm),
            head=head,
            tables={
                k: t.to(self.device) for k, t in rotary_tables(self.cfg, self.arch, max_pos).items()
            },
            act=self.act,
            quant=self.quant,
            config=self.cfg,
            device=self.device,
        )
        if self.arena is not None:  # the embedding, head and final norm
            self.arena.move(model.parameters())
            self.arena = None  # its newest mapping now lives only as long as the model
        return model


def _layer_keys(a: Arch) -> set[str]:
    """The HF tensor names (under ``model.layers.N.``) a layer of this family has."""
    if a.model_type == "phi3":
        keys = {"self_attn.qkv_proj.weight", "mlp.gate_up_proj.weight"}
    else:
        keys = {f"self_attn.{x}_proj.weight" for x in "qkv"}
        keys |= {"mlp.gate_proj.weight", "mlp.up_proj.weight"}
    keys |= {"self_attn.o_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"}
    keys.add("post_attention_layernorm.weight")
    if a.qkv_bias:
        keys |= {f"self_attn.{x}_proj.bias" for x in "qkv"}
    if a.qk_norm:
        keys |= {"self_attn.q_norm.weight", "self_attn.k_norm.weight"}
    if a.sandwich:
        keys |= {"pre_feedforward_layernorm.weight", "post_feedforward_layernorm.weight"}
    return keys

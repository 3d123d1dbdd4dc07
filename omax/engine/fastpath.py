"""A lean decoder for every family in ``omax.engine.arch``: plain torch functions over
weights built at load.

Through the transformers module stack, a decode step spends most of its time in Python
(every layer's module calls, hooks and reshapes). This path runs the same maths with a
few torch ops per layer, for llama, mistral, qwen2, qwen3, gemma2, gemma3 and phi3 alike:
what differs between them is data (``Arch``: norm placement and offset, QK norms,
biases, embedding scale, soft-capping, activation, sliding windows, rotary tables).

* one fused QKV projection and one fused gate/up projection per layer;
* q/k rows in the interleaved (GGUF/Meta) order, so rotary embedding is one complex
  multiply over q and k together, from precomputed tables (``omax.engine.rotary``);
* RMSNorm, the gated activation and rotary embedding as the native decode step's own
  loops where its kernels are built (``RowOps``), else torch's ops;
* ``F.rms_norm`` (gemma's ``1 + w`` baked into the weights at load), SDPA (decode
  folds the query heads of each KV head into query rows: no GQA expansion; gemma2's
  soft-capped scores take an explicit softmax) and in-place residual adds;
* weight-only int4 linears that run GGUF's own 4-bit blocks and int8 linears
  (``aten._weight_int8pack_mm``, per-output-row scales) with bf16 activations and no
  dense copy (``Lin``), or (quant "none") dense fp32 weights and activations: exact
  generation, token for token what transformers computes.

Weights are built tensor by tensor while the store streams them
(``omax.engine.fast_builder``), so loading holds the quantised model plus at most one
layer of dense weights.

Batch invariance. The packed kernels are row-invariant (a row's result does not depend
on how many rows the call has); a dense matmul is not (its sums follow the row count:
quant "none", and the rare ``Lin`` that keeps a dense copy, takes one past
``Lin.SMALL`` rows), and batched decode attention pads keys to the longest row. So the
rows a caller pins (``Rows``: a seeded request's) take kernels fixed by their role,
decode rows the packed one and each prompt segment a dense call of exactly its own
rows, and the runner gives each pinned decode row its own unpadded attention: such a
request computes the same bits alone and in any batch. Where the native decode step
runs (``omax.engine.native``: every family here, on a CPU with bf16 activations),
decode rows take it, pinned or not: its kernels compute each row alike for any row
count, and a pass with a pinned row keeps its int8 kernel past the rows where it would
switch to its many-row one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from omax.engine.arch import Arch
from omax.engine.linear import Lin, Rows, refine_top

QUANTS = ("none", "int4", "int8", "bf16")  # "none": dense fp32, exact


@dataclass
class Layer:
    """One decoder layer; the optional parts are None where the family lacks them."""

    ln1: torch.Tensor
    qkv: Lin
    o: Lin
    ln2: torch.Tensor
    gu: Lin
    down: Lin
    bias: torch.Tensor | None = None  # fused q/k/v bias
    q_norm: torch.Tensor | None = None
    k_norm: torch.Tensor | None = None
    post_attn: torch.Tensor | None = None
    post_ffn: torch.Tensor | None = None
    window: int | None = None  # keys a query sees: the last ``window`` positions
    rope: str = ""  # key into ``FastDecoder.tables``

    def tensors(self) -> list[torch.Tensor]:
        """Every weight tensor of the layer (norms, biases, the linears' own)."""
        norms = (self.ln1, self.ln2, self.bias, self.q_norm, self.k_norm)
        out = [t for t in (*norms, self.post_attn, self.post_ffn) if t is not None]
        for lin in (self.qkv, self.o, self.gu, self.down):
            out += lin.tensors()
        return out


@dataclass
class FastDecoder:
    """The weights and shapes of one decoder in the lean layout."""

    arch: Arch
    layers: list[Layer]
    embed: Lin
    norm: torch.Tensor
    head: Lin
    tables: dict[str, torch.Tensor]  # complex64 [max_pos, head_dim // 2] per rope kind
    act: torch.dtype
    quant: str
    config: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def n_heads(self) -> int:
        return self.arch.heads

    @property
    def n_kv(self) -> int:
        return self.arch.kv_heads

    @property
    def head_dim(self) -> int:
        return self.arch.head_dim

    @property
    def eps(self) -> float:
        return self.arch.eps

    @property
    def freqs(self) -> torch.Tensor:
        """The first layer's rotary table (its length bounds the positions)."""
        return self.tables[self.layers[0].rope]

    @property
    def kernels(self) -> Any:
        """The native module whose kernels this model's weights took (``linear.Lin``),
        or None: torch's kernels throughout."""
        return self.head.kernels

    @property
    def max_pos(self) -> int:
        return self.freqs.shape[0]

    # Engine.stats and the embeddings helper treat this like a transformers model.
    def parameters(self):
        seen: set[int] = set()
        tensors = [t for layer in self.layers for t in layer.tensors()]
        tensors += [self.norm, *self.embed.tensors(), *self.head.tensors()]
        for t in tensors:
            if id(t) not in seen:  # a tied head is the embedding
                seen.add(id(t))
                yield t

    def buffers(self):
        return iter(())

    @property
    def model(self) -> FastDecoder:
        return self

    @torch.inference_mode()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any):
        """Last hidden states [B, T, H] of right-padded ``input_ids`` (embeddings)."""
        b, t = input_ids.shape
        dev = input_ids.device
        pos = torch.arange(t, device=dev).repeat(b)
        keep = attention_mask.bool()
        q_pos = torch.arange(t, device=dev)

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            q = q.reshape(b, t, self.n_heads, -1).transpose(1, 2)
            k = k.view(b, t, self.n_kv, -1).transpose(1, 2)
            v = v.view(b, t, self.n_kv, -1).transpose(1, 2)
            causal = window_mask(q_pos, t, self.layers[i].window, dev)
            mask = (causal[None] & keep[:, None, :])[:, None]  # [B, 1, T, T]
            o = self.attention(q, k, v, mask)
            return o.transpose(1, 2).reshape(b * t, -1)

        h = self.forward(input_ids.reshape(-1), pos, attend)
        h = F.rms_norm(h, (h.shape[-1],), self.norm, self.eps)
        return SimpleNamespace(last_hidden_state=h.view(b, t, -1).float())

    def attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        """SDPA over ``[B, heads, T, hd]`` with the family's scale and soft-capping;
        ``mask`` is boolean (True = attend). q may have more heads than k and v (GQA)."""
        a = self.arch
        gqa = q.shape[-3] != k.shape[-3]
        if a.attn_softcap is None:
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal, scale=a.attn_scale, enable_gqa=gqa
            )
        if gqa:
            g = q.shape[-3] // k.shape[-3]
            k, v = k.repeat_interleave(g, dim=-3), v.repeat_interleave(g, dim=-3)
        s = torch.matmul(q, k.transpose(-1, -2)) * a.attn_scale
        s = torch.tanh(s / a.attn_softcap) * a.attn_softcap
        if causal:
            n, m = s.shape[-2], s.shape[-1]
            mask = torch.ones(n, m, dtype=torch.bool, device=s.device).tril(m - n)
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        p = torch.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(p, v)

    def forward(
        self, ids: torch.Tensor, pos: torch.Tensor, attend, rows: Rows | None = None
    ) -> torch.Tensor:
        """Hidden states [R, H] (before the final norm) of token rows ``ids`` at ``pos``.

        ``attend(layer_index, q [R, nh, hd], k [R, nkv, hd], v [R, nkv, hd])`` returns
        the attention output [R, nh*hd]; it owns the KV cache. ``rows`` pins kernels.
        """
        a, act = self.arch, self.act
        nh, nkv, hd = a.heads, a.kv_heads, a.head_dim
        r = ids.shape[0]
        h = self.embed.rows(ids, act)
        if a.embed_scale != 1.0:  # rounded to the activation dtype, as transformers does
            h = h * torch.tensor(a.embed_scale, dtype=act)
        ops = RowOps(self, pos)
        qk_dim = (nh + nkv) * hd
        for i, layer in enumerate(self.layers):
            y = layer.qkv(ops.norm(h, layer.ln1), rows)
            if layer.bias is not None:
                y = y + layer.bias
            qk = ops.rope(y, layer)
            o = layer.o(attend(i, qk[:, :nh], qk[:, nh:], y[:, qk_dim:].view(r, nkv, hd)), rows)
            if layer.post_attn is not None:
                o = ops.norm(o, layer.post_attn)
            h.add_(o)
            d = layer.down(ops.act_mul(layer.gu(ops.norm(h, layer.ln2), rows)), rows)
            if layer.post_ffn is not None:
                d = ops.norm(d, layer.post_ffn)
            h.add_(d)
        return h

    def logits(self, h: torch.Tensor, rows: Rows | None = None) -> torch.Tensor:
        x = F.rms_norm(h, (h.shape[-1],), self.norm, self.eps)
        out = self.head(x, rows).float()
        if self.act != torch.float32:
            out = refine_top(out, x, self.head)
        return softcap(out, self.arch.final_softcap)


class RowOps:
    """The row-wise parts of a step over rows at ``pos``: RMSNorm, the gated activation
    and rotary embedding (after the QK norms).

    Where the weights took the native module's kernels (``FastDecoder.kernels``: bf16
    on a CPU that has them) these are its kernels, the ones its decode step runs: one
    pass each over a row, where torch runs several elementwise ops per part, each a
    parallel loop (together ~1/3 of a prompt's step on 2 cores). They give torch's
    results to about the last bit of bf16 (silu exactly: their sums and products
    round in another order). Elsewhere (CUDA, fp32 activations, no build), torch's
    ops. Each row is computed alone either way: pinned rows keep their bits.
    """

    def __init__(self, model: FastDecoder, pos: torch.Tensor) -> None:
        self.m = model
        self.ops = model.kernels
        self.eps = model.arch.eps
        self.gelu = model.arch.act == "gelu_tanh"
        if self.ops is not None:
            self.at = pos.tolist()
        else:  # [R, 1, hd/2] rotations per rotary kind
            self.f = {kind: t[pos].unsqueeze(1) for kind, t in model.tables.items()}

    def norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.ops is not None:
            return self.ops.rms_norm(x.contiguous(), w, self.eps)
        return F.rms_norm(x, (x.shape[-1],), w, self.eps)

    def act_mul(self, gu: torch.Tensor) -> torch.Tensor:
        """``act(gu[:, :n]) * gu[:, n:]`` (silu, or gemma's gelu-tanh)."""
        if self.ops is not None:
            return self.ops.act_mul(gu.contiguous(), self.gelu)
        n = gu.shape[1] // 2
        g = F.gelu(gu[:, :n], approximate="tanh") if self.gelu else F.silu(gu[:, :n])
        return g * gu[:, n:]

    def rope(self, y: torch.Tensor, layer: Layer) -> torch.Tensor:
        """q and k of ``layer``'s fused qkv output ``y`` [R, (nh + 2 nkv) hd],
        QK-normed where the family has it, then rotated: [R, nh + nkv, hd]."""
        a, r = self.m.arch, y.shape[0]
        nh, nkv, hd = a.heads, a.kv_heads, a.head_dim
        if self.ops is not None:
            table = self.m.tables[layer.rope]
            return self.ops.rope_qk(
                y.contiguous(), table, self.at, nh, nkv, hd, layer.q_norm, layer.k_norm, self.eps
            )
        qk = y[:, : (nh + nkv) * hd].reshape(r, nh + nkv, hd)
        if layer.q_norm is not None and layer.k_norm is not None:
            qk = torch.cat(
                [
                    F.rms_norm(qk[:, :nh], (hd,), layer.q_norm, self.eps),
                    F.rms_norm(qk[:, nh:], (hd,), layer.k_norm, self.eps),
                ],
                dim=1,
            )
        c = torch.view_as_complex(qk.reshape(r, nh + nkv, hd // 2, 2).float())
        return torch.view_as_real(c * self.f[layer.rope]).to(self.m.act).view(r, nh + nkv, hd)


def softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """gemma2's ``tanh`` soft-capping of the final logits (identity without a cap)."""
    return logits if cap is None else torch.tanh(logits / cap) * cap


def window_mask(q_pos: torch.Tensor, n_keys: int, window: int | None, device) -> torch.Tensor:
    """Boolean [Q, n_keys]: query at position ``q_pos[i]`` sees key ``j`` when
    ``j <= q_pos[i]`` and, with a sliding ``window``, ``q_pos[i] - j < window``."""
    keys = torch.arange(n_keys, device=device).unsqueeze(0)
    qp = q_pos.unsqueeze(1)
    mask = keys <= qp
    if window is not None:
        mask &= qp - keys < window
    return mask

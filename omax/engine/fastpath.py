"""A lean llama-family decoder: plain torch functions over weights built at load.

The transformers module stack costs ~25 ms of Python per SmolLM2 decode step (30
layers of module calls, hooks and reshapes). This path runs the same maths with a few
torch ops per layer:

* one fused QKV projection and one fused gate/up projection per layer;
* q/k rows in the interleaved (GGUF/Meta) order, so rotary embedding is one complex
  multiply over q and k together, from a precomputed table;
* ``F.rms_norm``, ``F.scaled_dot_product_attention`` (decode folds the query heads
  of each KV head into query rows: no GQA expansion) and in-place residual adds;
* weight-only int4 linears that run GGUF's own Q4_1 blocks (``Lin``), int8 linears
  (``aten._weight_int8pack_mm``, per-output-row scales) with bf16 activations, or
  dense linears in the activation dtype.

Weights are built tensor by tensor while the store streams them (``FastBuilder``), so
loading holds the quantised model plus at most one layer of dense weights.

Numerics differ from transformers (bf16 activations; int8 re-rounds weights): it is
the fast mode. Greedy top-1 agreement with exact fp32 along fp32's own 256-token path
(SmolLM2 Q4_1): int4 0.992, int8 0.996, bf16 1.000. Exact fp32 generation uses
``omax.engine.runner.Runner`` over the transformers model instead.

Batch invariance. The packed kernels are row-invariant (a row's result does not depend
on how many rows the call has); the dense matmul is not (its sums follow the row
count), the kernel a linear takes follows the pass's row count (``Lin.SMALL``), and
batched decode attention pads keys to the longest row. So the rows a caller pins
(``Rows``: a seeded request's) take kernels fixed by their role, decode rows the packed
one and each prompt segment a dense call of exactly its own rows, and the runner gives
each pinned decode row its own unpadded attention: such a request computes the same
bits alone and in any batch. The other rows keep the fastest kernels for the batch.
Where the native decode step runs (``omax.engine.native``), decode rows take it,
pinned or not: its kernels compute each row alike for any row count, and a pass with
a pinned row keeps its int8 kernel past the rows where it would switch to bf16.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from omax.engine.weights import Q4Blocks
from omax.errors import EngineError

FAST_MODEL_TYPES = ("llama", "mistral")
QUANTS = ("int4", "int8", "bf16")
GROUP = 32


class Lin:
    """``x [R, K] -> x @ W.T [R, N]`` through the fastest kernel for ``R``.

    ``quant`` "int4" repacks GGUF Q4_1 blocks (``Q4Blocks``) for
    ``_weight_int4pack_mm_for_cpu`` exactly: the kernel computes ``(q - 8) * scale +
    zero`` per group of 32, so ``scale = d`` and ``zero = m + 8 d``. A weight that is not
    Q4_1 is never re-quantised to 4 bits (that loses accuracy the source did not
    have): it takes "int8" instead, per-output-row symmetric for ``_weight_int8pack_mm``.
    One-stream decode is memory bound, so these kernels, which read the fewest bytes,
    win there. The packed kernels' cost grows with the rows while a dense bf16 matmul
    stays memory bound, so batches of more than ``SMALL[quant]`` rows take ``dense``, a
    bf16 copy of the same dequantised weights (also used for embedding lookups).
    Crossovers measured over 30 distinct 3072x576 weights (not cache resident, as in a
    model), 2 threads: int4 77/275/504 us at 1/8/16 rows, int8 214/487/781, dense
    297/416/429.
    """

    __slots__ = ("w", "s", "n", "dense", "quant", "small")
    SMALL = {"int4": 8, "int8": 4}

    def __init__(self, w: torch.Tensor | Q4Blocks, quant: str, act: torch.dtype) -> None:
        self.n, k = w.shape
        self.w: torch.Tensor | None = None
        self.s: torch.Tensor | None = None
        if quant == "int4" and not isinstance(w, Q4Blocks):
            quant = "int8"
        self.quant = quant
        if isinstance(w, Q4Blocks):
            if quant == "int4":
                if k % GROUP:
                    raise EngineError(f"int4 needs in_features divisible by {GROUP}, got {k}")
                self.w = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
                    w.codes.to(torch.int32), 1
                )
                sz = torch.stack([w.scale, w.low + 8 * w.scale], dim=-1)  # [N, G, 2]
                self.s = sz.transpose(0, 1).contiguous().to(act)
            w = w.dequantize()
        w = w.float()
        if quant == "int8":
            s = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
            q8 = torch.round(w / s[:, None])
            self.w = q8.to(torch.int8)
            self.s = s.to(act)
            w = q8 * self.s.float()[:, None]  # the dense copy holds the same weights
        elif quant not in ("int4", "none"):
            raise EngineError(f"unknown quant {quant!r}")
        self.dense = w.to(act)
        self.small = self.SMALL.get(quant, 0)

    def __call__(self, x: torch.Tensor, rows: Rows | None = None) -> torch.Tensor:
        dense = self.dense
        r = x.shape[0]
        if rows is None:
            return self._packed(x) if self.w is not None and r <= self.small else F.linear(x, dense)
        packed, free, groups = rows.plan(r, self.small, self.w is not None, x.device)
        if packed is not None and len(packed) == r:
            return self._packed(x)
        if len(groups) == 1 and groups[0] == (0, r):
            return F.linear(x, dense)
        out = x.new_empty(r, self.n)
        if packed is not None:
            out.index_copy_(0, packed, self._packed(x.index_select(0, packed)))
        if free is not None:
            out.index_copy_(0, free, F.linear(x.index_select(0, free), dense))
        for first, n in groups:
            out[first : first + n] = F.linear(x[first : first + n], dense)
        return out

    def _packed(self, x: torch.Tensor) -> torch.Tensor:
        if self.quant == "int4":
            return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.w, GROUP, self.s)
        return torch.ops.aten._weight_int8pack_mm(x, self.w, self.s)

    def rows(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows ``ids`` of the weight as ``dtype`` (embedding lookup of a tied head)."""
        return self.dense[ids].to(dtype)

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.w, self.s) if t is not None] + [self.dense]


class Rows:
    """The rows of one pass that must not follow the batch (a seeded request's).

    ``packed`` rows (decode rows, a prompt's last row at the head) take the packed
    kernel, which is row-invariant for any row count; a linear without one runs each
    of them alone. Each of ``groups``, ``(first, n)`` (a prompt segment's rows), gets a
    dense call of its own: the dense kernel's sums follow the row count, and a segment
    has the same rows alone and in a batch. The other rows take whichever kernel their
    own count makes fastest, as without pins.
    """

    __slots__ = ("packed", "groups", "_plans")

    def __init__(self, packed: list[int], groups: Sequence[tuple[int, int]] = ()) -> None:
        self.packed, self.groups = packed, list(groups)
        self._plans: dict[tuple[int, int, bool], tuple] = {}

    def plan(self, n: int, small: int, has_packed: bool, device: torch.device) -> tuple:
        """``(packed index | None, dense index | None, groups)`` for ``n`` rows and a
        linear whose packed kernel (if ``has_packed``) wins up to ``small`` rows."""
        key = (n, small, has_packed)
        if key not in self._plans:
            groups = list(self.groups)
            packed = set(self.packed) if has_packed else set()
            if not has_packed:
                groups += [(r, 1) for r in self.packed]
            taken = packed | {r for s, k in groups for r in range(s, s + k)}
            free = [r for r in range(n) if r not in taken]
            dense: list[int] = []
            if has_packed and len(free) <= small:
                packed |= set(free)
            else:
                dense = free

            def index(rows):
                return torch.tensor(sorted(rows), device=device) if rows else None

            self._plans[key] = (index(packed), index(dense), groups)
        return self._plans[key]


@dataclass
class Layer:
    ln1: torch.Tensor
    qkv: Lin
    o: Lin
    ln2: torch.Tensor
    gu: Lin
    down: Lin


@dataclass
class FastLlama:
    """The weights and shapes of one llama-family decoder in the lean layout."""

    layers: list[Layer]
    embed: Lin
    norm: torch.Tensor
    head: Lin
    freqs: torch.Tensor  # complex64 [max_pos, head_dim // 2]
    n_heads: int
    n_kv: int
    head_dim: int
    eps: float
    act: torch.dtype
    quant: str
    config: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    # Engine.stats and the embeddings helper treat this like a transformers model.
    def parameters(self):
        seen: set[int] = set()
        lins = [self.embed, self.head]
        for layer in self.layers:
            lins += [layer.qkv, layer.o, layer.gu, layer.down]
            yield layer.ln1
            yield layer.ln2
        yield self.norm
        for lin in lins:
            for t in lin.tensors():
                if id(t) not in seen:
                    seen.add(id(t))
                    yield t

    def buffers(self):
        return iter(())

    @property
    def model(self) -> FastLlama:
        return self

    @torch.inference_mode()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any):
        """Last hidden states [B, T, H] of right-padded ``input_ids`` (embeddings)."""
        b, t = input_ids.shape
        pos = torch.arange(t, device=input_ids.device).repeat(b)
        keep = attention_mask.bool()
        causal = torch.ones(t, t, dtype=torch.bool, device=input_ids.device).tril()
        mask = (causal[None] & keep[:, None, :])[:, None]  # [B, 1, T, T]

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            q = q.reshape(b, t, self.n_heads, -1).transpose(1, 2)
            k = k.view(b, t, self.n_kv, -1).transpose(1, 2)
            v = v.view(b, t, self.n_kv, -1).transpose(1, 2)
            o = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, enable_gqa=self.n_kv != self.n_heads
            )
            return o.transpose(1, 2).reshape(b * t, -1)

        h = self.forward(input_ids.reshape(-1), pos, attend)
        h = F.rms_norm(h, (h.shape[-1],), self.norm, self.eps)
        return SimpleNamespace(last_hidden_state=h.view(b, t, -1).float())

    def forward(
        self, ids: torch.Tensor, pos: torch.Tensor, attend, rows: Rows | None = None
    ) -> torch.Tensor:
        """Hidden states [R, H] (before the final norm) of token rows ``ids`` at ``pos``.

        ``attend(layer_index, q [R, nh, hd], k [R, nkv, hd], v [R, nkv, hd])`` returns
        the attention output [R, nh*hd]; it owns the KV cache. ``rows`` pins kernels.
        """
        act, eps, nh, nkv, hd = self.act, self.eps, self.n_heads, self.n_kv, self.head_dim
        r = ids.shape[0]
        h = self.embed.rows(ids, act)
        hidden = (h.shape[-1],)
        f = self.freqs[pos].unsqueeze(1)  # [R, 1, hd/2]
        qk_dim = (nh + nkv) * hd
        for i, layer in enumerate(self.layers):
            x = F.rms_norm(h, hidden, layer.ln1, eps)
            y = layer.qkv(x, rows)
            qk = torch.view_as_complex(y[:, :qk_dim].reshape(r, nh + nkv, hd // 2, 2).float())
            qk = torch.view_as_real(qk * f).to(act).view(r, nh + nkv, hd)
            o = attend(i, qk[:, :nh], qk[:, nh:], y[:, qk_dim:].view(r, nkv, hd))
            h.add_(layer.o(o, rows))
            gu = layer.gu(F.rms_norm(h, hidden, layer.ln2, eps), rows)
            n = gu.shape[1] // 2
            h.add_(layer.down(F.silu(gu[:, :n]) * gu[:, n:], rows))
        return h

    def logits(self, h: torch.Tensor, rows: Rows | None = None) -> torch.Tensor:
        x = F.rms_norm(h, (h.shape[-1],), self.norm, self.eps)
        return refine_top(self.head(x, rows).float(), x, self.head.dense)


def device_quant(quant: str, device: torch.device) -> str:
    """The quant ``device`` can run. The packed int4/int8 kernels used here are CPU
    kernels (``_weight_int4pack_mm_for_cpu``, ``_weight_int8pack_mm``), so on another
    device the same fast path runs dense bf16 weights instead."""
    return "bf16" if quant in ("int4", "int8") and device.type != "cpu" else quant


def supports(config: dict[str, Any]) -> bool:
    """Whether the lean path can run this model (plain llama-family decoders)."""
    return (
        config.get("model_type") in FAST_MODEL_TYPES
        and not config.get("attention_bias", False)
        and not config.get("mlp_bias", False)
    )


def _rows(w: torch.Tensor | Q4Blocks, fn: Any) -> torch.Tensor | Q4Blocks:
    return w.map_rows(fn) if isinstance(w, Q4Blocks) else fn(w)


def _cat(parts: list[Any]) -> torch.Tensor | Q4Blocks:
    """Fuse projections row-wise; Q4_1 blocks stay blocks only if every part is one."""
    if all(isinstance(p, Q4Blocks) for p in parts):
        return Q4Blocks.cat(parts)
    return torch.cat([p.dequantize() if isinstance(p, Q4Blocks) else p for p in parts])


REFINE = 8


def refine_top(logits: torch.Tensor, x: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``logits`` [R, V] with their top ``REFINE`` per row recomputed in fp32.

    The head's kernels return bf16, whose values are 1/8 apart between 16 and 32: the
    top logits often tie, and the greedy token would hang on rounding (SmolLM2 int4,
    "What is the capital of France?": "L" and "The" both 25.25; 25.25 and 25.30 in
    fp32). The candidates' rows of ``dense`` are dotted with the normed hidden state
    ``x`` [R, H] in fp32 (the native step does the same, or has its packed kernels
    return fp32). ~0.1 ms a row."""
    k = min(REFINE, logits.shape[-1])
    idx = logits.topk(k, dim=-1).indices
    w = dense.index_select(0, idx.reshape(-1)).view(idx.shape[0], k, -1).float()
    exact = torch.bmm(w, x.float().unsqueeze(-1)).squeeze(-1)
    return logits.scatter_(1, idx, exact)


def _interleave(w: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """HF rotate-half row order -> interleaved pairs (GGUF/Meta order) per head."""
    half = torch.arange(head_dim // 2)
    perm = torch.stack([half, half + head_dim // 2], dim=-1).reshape(-1)
    return w.view(n_heads, head_dim, -1)[:, perm].reshape(n_heads * head_dim, -1)


class FastBuilder:
    """Collects HF-named dense tensors one at a time and builds ``FastLlama``.

    Each layer's projections are fused and quantised as soon as the layer's last piece
    arrives, and the dense pieces are dropped.
    """

    def __init__(self, hf_config: Any, *, quant: str, act: torch.dtype, device: torch.device):
        if quant not in QUANTS:
            raise EngineError(f"unknown fast quant {quant!r}; use one of {QUANTS}")
        quant = device_quant(quant, device)
        self.cfg = hf_config
        self.quant, self.act, self.device = quant, act, device
        self.n_heads = hf_config.num_attention_heads
        self.n_kv = getattr(hf_config, "num_key_value_heads", None) or self.n_heads
        self.head_dim = (
            getattr(hf_config, "head_dim", None) or hf_config.hidden_size // self.n_heads
        )
        n = hf_config.num_hidden_layers
        self.pending: list[dict[str, Any]] = [{} for _ in range(n)]
        self.layers: list[Layer | None] = [None] * n
        self.other: dict[str, Any] = {}

    def _lin(self, w: torch.Tensor | Q4Blocks, quant: str | None = None) -> Lin:
        quant = quant or ("none" if self.quant == "bf16" else self.quant)
        if isinstance(w, Q4Blocks):
            w = w.map_rows(lambda t: t.to(self.device))
        else:
            w = w.to(self.device)
        return Lin(w, quant, self.act)

    def add(self, name: str, t: torch.Tensor | Q4Blocks) -> None:
        if isinstance(t, Q4Blocks) and self.quant != "int4":
            t = t.dequantize()
        parts = name.split(".")
        if len(parts) > 3 and parts[0] == "model" and parts[1] == "layers":
            i = int(parts[2])
            key = ".".join(parts[3:])
            p = self.pending[i]
            p[key] = t
            if len(p) == 9:
                self.layers[i] = self._layer(p)
                self.pending[i] = {}
        else:
            self.other[name] = t

    def _layer(self, p: dict[str, Any]) -> Layer:
        try:
            nh, nkv, hd = self.n_heads, self.n_kv, self.head_dim
            q = _rows(p["self_attn.q_proj.weight"], lambda t: _interleave(t, nh, hd))
            k = _rows(p["self_attn.k_proj.weight"], lambda t: _interleave(t, nkv, hd))
            qkv = _cat([q, k, p["self_attn.v_proj.weight"]])
            gu = _cat([p["mlp.gate_proj.weight"], p["mlp.up_proj.weight"]])
            return Layer(
                ln1=p["input_layernorm.weight"].to(self.device, self.act),
                qkv=self._lin(qkv),
                o=self._lin(p["self_attn.o_proj.weight"]),
                ln2=p["post_attention_layernorm.weight"].to(self.device, self.act),
                gu=self._lin(gu),
                down=self._lin(p["mlp.down_proj.weight"]),
            )
        except KeyError as exc:
            raise EngineError(f"fast path: layer tensor {exc} missing or unexpected") from None

    def build(self) -> FastLlama:
        if any(layer is None for layer in self.layers):
            missing = [i for i, layer in enumerate(self.layers) if layer is None]
            raise EngineError(f"fast path: layers {missing[:5]} incomplete")
        emb = self.other.get("model.embed_tokens.weight")
        if emb is None:
            raise EngineError("fast path: model.embed_tokens.weight missing")
        embed = self._lin(emb)
        head_w = self.other.get("lm_head.weight")
        tied = bool(getattr(self.cfg, "tie_word_embeddings", False)) or head_w is None
        head = embed if tied or head_w is None else self._lin(head_w)
        return FastLlama(
            layers=[layer for layer in self.layers if layer is not None],
            embed=embed,
            norm=self.other["model.norm.weight"].to(self.device, self.act),
            head=head,
            freqs=rotary_table(self.cfg, self.head_dim).to(self.device),
            n_heads=self.n_heads,
            n_kv=self.n_kv,
            head_dim=self.head_dim,
            eps=float(getattr(self.cfg, "rms_norm_eps", 1e-6)),
            act=self.act,
            quant=self.quant,
            config=self.cfg,
            device=self.device,
        )


def rotary_table(hf_config: Any, head_dim: int) -> torch.Tensor:
    """complex64 [max_pos, head_dim/2]: e^(i * pos * inv_freq) * attention scaling.

    The frequencies come from transformers' rotary embedding for this config, so rope
    scaling variants (llama3, yarn, ...) follow transformers.
    """
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    rot = LlamaRotaryEmbedding(hf_config)
    inv = rot.inv_freq.float()
    assert inv.shape[0] == head_dim // 2
    n = int(getattr(hf_config, "max_position_embeddings", 8192) or 8192)
    ang = torch.outer(torch.arange(n, dtype=torch.float32), inv)
    return torch.polar(torch.full_like(ang, float(rot.attention_scaling)), ang)

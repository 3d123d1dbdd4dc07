"""The model runner: llama-family forward passes over a slot-based static KV cache.

The cache holds ``max_slots`` decode slots, one staging slot (``max_slots``) where a
long prompt is prefilled chunk by chunk, and ``prefix_rows`` rows after it that keep
the KV of recently finished sequences for prompt-prefix reuse (``omax.engine.prefix``).
A short prompt is prefilled straight into the decode slot it will use. Decoding
sequences always occupy slots ``0..B-1`` so one decode step reads the cache through a
view (no gather) and runs all of them in ONE forward pass, with a key mask for their
different lengths. ``step`` adds the step's prompt segments to that pass.

The runner reuses the transformers modules (embeddings, norms, projections, MLP,
rotary embedding) and only replaces attention + cache, so numerics follow
transformers' sdpa path: greedy output equals ``generate`` token for token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from omax.engine.fastpath import QUANTS as FAST_QUANTS
from omax.engine.fastpath import FastLlama, Rows
from omax.errors import EngineError


class Segment(NamedTuple):
    """A prompt's tokens ``ids`` at positions ``start..`` of cache row ``row``.

    ``pinned``: the request must compute the same alone and in any batch (a seeded
    one), so the fast path gives its rows kernels that do not follow the batch."""

    ids: list[int]
    start: int
    row: int
    pinned: bool = False


Segments = Sequence[Segment]


class Runner:
    def __init__(self, model: Any, *, max_slots: int, max_len: int, prefix_rows: int = 0) -> None:
        if not hasattr(model, "model") or not hasattr(model.model, "layers"):
            raise EngineError(f"{type(model).__name__} is not a decoder-only model we can run")
        self.model = model
        self.base = model.model
        self.layers = list(self.base.layers)
        cfg = model.config
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.scale = self.head_dim**-0.5
        self.max_slots = max_slots
        self.max_len = max_len
        self.staging = max_slots
        self.prefix_rows = prefix_rows
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        shape = (max_slots + 1 + prefix_rows, self.n_kv, max_len, self.head_dim)
        # torch.empty: pages are only committed once written, so memory follows use.
        self.k = [torch.empty(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.v = [torch.empty(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        # Positions below hw[slot] hold finite values. A masked key still multiplies its
        # value by zero, and 0 * NaN from never-written memory would poison the row.
        self.hw = [0] * shape[0]

    def _ensure_init(self, b: int, length: int) -> None:
        for s in range(b):
            if self.hw[s] < length:
                for k, v in zip(self.k, self.v, strict=True):
                    k[s, :, self.hw[s] : length].zero_()
                    v[s, :, self.hw[s] : length].zero_()
                self.hw[s] = length

    @property
    def bytes_per_token(self) -> int:
        return 2 * len(self.k) * self.n_kv * self.head_dim * self.k[0].element_size()

    def prefix_row(self, i: int) -> int:
        """The cache row of prefix row ``i`` (``0 <= i < prefix_rows``)."""
        assert 0 <= i < self.prefix_rows
        return self.max_slots + 1 + i

    def copy_slot(self, src: int, dst: int, length: int, start: int = 0) -> None:
        """Copy cached positions ``start..length-1`` of row ``src`` into row ``dst``."""
        if src == dst or length <= start:
            return
        self._wrote(dst, start, length)
        for k, v in zip(self.k, self.v, strict=True):
            k[dst, :, start:length].copy_(k[src, :, start:length])
            v[dst, :, start:length].copy_(v[src, :, start:length])

    def _layer(self, i, h, cos, sin, write, read_k, attn_mask, is_causal):
        layer = self.layers[i]
        attn = layer.self_attn
        x = layer.input_layernorm(h)
        b, t, _ = x.shape
        q = attn.q_proj(x).view(b, t, -1, self.head_dim)
        k = attn.k_proj(x).view(b, t, -1, self.head_dim)
        v = attn.v_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        if hasattr(attn, "q_norm"):
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        write(self.k[i], k)
        write(self.v[i], v)
        kk, vv = read_k(self.k[i]), read_k(self.v[i])
        o = F.scaled_dot_product_attention(
            q,
            kk,
            vv,
            attn_mask=attn_mask,
            is_causal=is_causal,
            scale=self.scale,
            enable_gqa=self.n_kv != self.n_heads,
        )
        h = h + attn.o_proj(o.transpose(1, 2).reshape(b, t, -1))
        return h + layer.mlp(layer.post_attention_layernorm(h))

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(self.base.norm(h)).float()

    @torch.inference_mode()
    def prefill(self, token_ids: list[int], start: int, slot: int | None = None) -> torch.Tensor:
        """Run ``token_ids`` at positions ``start..`` of ``slot``; return last logits [V]."""
        slot = self.staging if slot is None else slot
        t = len(token_ids)
        end = start + t
        if end > self.max_len:
            raise EngineError(f"sequence of {end} tokens exceeds the cache ({self.max_len})")
        ids = torch.tensor([token_ids], dtype=torch.long, device=self.device)
        pos = torch.arange(start, end, device=self.device).unsqueeze(0)
        h = self.base.embed_tokens(ids)
        cos, sin = self.base.rotary_emb(h, pos)

        self._wrote(slot, start, end)

        def write(cache, x):
            cache[slot, :, start:end].copy_(x[0])

        def read(cache):
            return cache[slot : slot + 1, :, :end]

        mask = None
        if start:
            q_pos = torch.arange(start, end, device=self.device).unsqueeze(1)
            mask = torch.arange(end, device=self.device).unsqueeze(0) <= q_pos
        for i in range(len(self.layers)):
            h = self._layer(i, h, cos, sin, write, read, mask, start == 0)
        return self._logits(h[:, -1])[0]

    @torch.inference_mode()
    def decode(self, token_ids: list[int], positions: list[int]) -> torch.Tensor:
        """One token for each of slots ``0..B-1`` at ``positions``; return logits [B, V]."""
        b = len(token_ids)
        ids = torch.tensor(token_ids, dtype=torch.long, device=self.device).unsqueeze(1)
        pos = torch.tensor(positions, dtype=torch.long, device=self.device)
        length = int(max(positions)) + 1
        h = self.base.embed_tokens(ids)
        cos, sin = self.base.rotary_emb(h, pos.unsqueeze(1))
        rows = torch.arange(b, device=self.device)
        self._ensure_init(b, length)

        def write(cache, x):
            cache[rows, :, pos] = x[:, :, 0]

        def read(cache):
            return cache[:b, :, :length]

        mask = None
        if b > 1 and min(positions) + 1 != length:
            mask = torch.arange(length, device=self.device).unsqueeze(0) <= pos.unsqueeze(1)
            mask = mask[:, None, None, :]
        for i in range(len(self.layers)):
            h = self._layer(i, h, cos, sin, write, read, mask, False)
        return self._logits(h[:, 0])

    def step(
        self,
        tokens: list[int],
        positions: list[int],
        segments: Segments = (),
        pinned: Sequence[bool] = (),
    ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """One batch step: decode slots ``0..B-1`` and prefill each of ``segments``.

        Returns the decode logits [B, V] (None with no tokens) and each segment's last
        logits [V]. ``pinned[i]``: decode row ``i`` must compute the same alone and in
        any batch (see ``Segment.pinned``). Here the parts are separate forward passes
        whose every row is batch-invariant already; ``FastRunner`` runs them in one.
        """
        last = [self.prefill(s.ids, s.start, s.row) for s in segments]
        return (self.decode(tokens, positions) if tokens else None), last

    def _wrote(self, row: int, start: int, end: int) -> None:
        """Positions ``start..end-1`` of ``row`` now hold finite values."""
        if start <= self.hw[row]:
            self.hw[row] = max(self.hw[row], end)


class FastRunner(Runner):
    """The same slot cache and interface as ``Runner``, over ``fastpath.FastLlama``.

    Rows are tokens throughout (``[R, H]``), so every projection is one 2-D matmul.
    Decode folds the query heads that share a KV head into query rows of one SDPA call.
    """

    def __init__(  # noqa: D107
        self,
        model: FastLlama,
        *,
        max_slots: int,
        max_len: int,
        prefix_rows: int = 0,
        native: bool = True,
    ) -> None:
        """``native``: decode rows take the native step (``omax.engine.native``) if it
        is already built when the runner is made."""
        self.fast = model
        self.n_heads, self.n_kv, self.head_dim = model.n_heads, model.n_kv, model.head_dim
        self.group = self.n_heads // self.n_kv
        self.max_slots = max_slots
        self.max_len = min(max_len, model.freqs.shape[0])
        self.staging = max_slots
        self.prefix_rows = prefix_rows
        self.device, self.dtype = model.device, model.act
        shape = (max_slots + 1 + prefix_rows, self.n_kv, self.max_len, self.head_dim)
        n = len(model.layers)
        # torch.empty: pages are only committed once written, so memory follows use.
        self.k = [torch.empty(shape, dtype=self.dtype, device=self.device) for _ in range(n)]
        self.v = [torch.empty(shape, dtype=self.dtype, device=self.device) for _ in range(n)]
        self.hw = [0] * shape[0]
        self.native = _native_decoder(model, self.k, self.v) if native else None

    def _decode_mask(self, positions: list[int], pos: torch.Tensor, length: int):
        """Rows shorter than the longest attend only to their own keys."""
        if len(positions) > 1 and min(positions) + 1 != length:
            keys = torch.arange(length, device=self.device).unsqueeze(0)
            return (keys <= pos.unsqueeze(1))[:, None, None, :]
        return None

    def _prefill_attend(self, t: int, start: int, slot: int):
        """``attend`` for ``t`` prompt rows at ``start..`` of ``slot`` (causal)."""
        end = start + t
        self._check_len(end)
        self._wrote(slot, start, end)
        mask = None
        if start:
            q_pos = torch.arange(start, end, device=self.device).unsqueeze(1)
            mask = torch.arange(end, device=self.device).unsqueeze(0) <= q_pos
        ks, vs, gqa = self.k, self.v, self.n_kv != self.n_heads

        def attend(i, q, k, v):
            kc, vc = ks[i], vs[i]
            kc[slot, :, start:end] = k.transpose(0, 1)
            vc[slot, :, start:end] = v.transpose(0, 1)
            o = F.scaled_dot_product_attention(
                q.transpose(0, 1).unsqueeze(0),
                kc[slot : slot + 1, :, :end],
                vc[slot : slot + 1, :, :end],
                attn_mask=mask,
                is_causal=mask is None,
                enable_gqa=gqa,
            )
            return o[0].transpose(0, 1).reshape(t, -1)

        return attend

    def _decode_attend(self, positions: list[int], pos: torch.Tensor, pinned: Sequence[bool]):
        """``attend`` for one token in each of slots ``0..B-1`` at ``positions``.

        The rows share one SDPA call, keys padded to the longest and masked; a pinned
        row gets a call of its own over exactly its keys, as it would alone (the
        padding changes the kernel's reduction, so the last bits)."""
        b = len(positions)
        dev = self.device
        length = int(max(positions)) + 1
        solo = [i for i, p in enumerate(pinned) if p]
        self._ensure_init(b, length)
        mask = self._decode_mask(positions, pos, length)
        ks, vs, nkv, g, hd = self.k, self.v, self.n_kv, self.group, self.head_dim
        idx = (torch.arange(b, device=dev), slice(None), pos)
        sdpa = F.scaled_dot_product_attention

        def attend(i, q, k, v):
            kc, vc = ks[i], vs[i]
            kc[idx] = k
            vc[idx] = v
            q = q.view(b, nkv, g, hd)
            if len(solo) < b:
                o = sdpa(q, kc[:b, :, :length], vc[:b, :, :length], attn_mask=mask).view(b, -1)
            else:
                o = q.new_empty(b, nkv * g * hd)
            for r in solo:
                n = positions[r] + 1
                o[r] = sdpa(q[r : r + 1], kc[r : r + 1, :, :n], vc[r : r + 1, :, :n]).view(-1)
            return o

        return attend

    def _check_len(self, end: int) -> None:
        if end > self.max_len:
            raise EngineError(f"sequence of {end} tokens exceeds the cache ({self.max_len})")

    @torch.inference_mode()
    def prefill(self, token_ids: list[int], start: int, slot: int | None = None) -> torch.Tensor:
        """Run ``token_ids`` at positions ``start..`` of ``slot``; return last logits [V]."""
        slot = self.staging if slot is None else slot
        t = len(token_ids)
        ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)
        pos = torch.arange(start, start + t, device=self.device)
        h = self.fast.forward(ids, pos, self._prefill_attend(t, start, slot))
        return self.fast.logits(h[-1:])[0]

    @torch.inference_mode()
    def decode(
        self, token_ids: list[int], positions: list[int], pinned: Sequence[bool] = ()
    ) -> torch.Tensor:
        """One token for each of slots ``0..B-1`` at ``positions``; return logits [B, V]."""
        ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)
        if self.native is not None:
            length = max(positions) + 1
            self._check_len(length)
            self._ensure_init(len(positions), length)
            return self.native.decode(ids, positions, length, invariant=any(pinned))
        pos = torch.tensor(positions, dtype=torch.long, device=self.device)
        rows = Rows([i for i, p in enumerate(pinned) if p]) if any(pinned) else None
        h = self.fast.forward(ids, pos, self._decode_attend(positions, pos, pinned), rows)
        return self.fast.logits(h, rows)

    @torch.inference_mode()
    def step(
        self,
        tokens: list[int],
        positions: list[int],
        segments: Segments = (),
        pinned: Sequence[bool] = (),
    ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """``Runner.step`` in ONE forward pass: decode rows first, then each segment's.

        Every projection reads its weights once for all of them (decode is memory
        bound, so a step that also prefills costs about what the larger part would
        alone), and many short prompts join in one step. Pinned rows take kernels that
        do not follow the batch (``fastpath.Rows``). With the native step, a pass with
        a pinned decode row runs the decode rows natively and the prompts apart: that
        row must take the kernels it takes in a step that only decodes.
        """
        if not segments:
            return (self.decode(tokens, positions, pinned) if tokens else None), []
        if tokens and self.native is not None and any(pinned):
            return self.decode(tokens, positions, pinned), self.step([], [], segments)[1]
        b = len(tokens)
        dev = self.device
        ids = [*tokens]
        pos = [*positions]
        packed = [i for i, p in enumerate(pinned) if p]
        groups: list[tuple[int, int]] = []  # rows of pinned segments in the pass
        head = list(packed)  # pinned rows among the logits rows
        parts = []  # (first row, rows, attend)
        if b:
            parts.append(
                (0, b, self._decode_attend(positions, torch.tensor(positions, device=dev), pinned))
            )
        for j, seg in enumerate(segments):
            r, n = len(ids), len(seg.ids)
            parts.append((r, n, self._prefill_attend(n, seg.start, seg.row)))
            if seg.pinned:
                groups.append((r, n))
                head.append(b + j)
            ids += seg.ids
            pos += range(seg.start, seg.start + n)

        def attend(i, q, k, v):
            return torch.cat(
                [fn(i, q[r : r + n], k[r : r + n], v[r : r + n]) for r, n, fn in parts]
            )

        pins = bool(head)
        h = self.fast.forward(
            torch.tensor(ids, dtype=torch.long, device=dev),
            torch.tensor(pos, dtype=torch.long, device=dev),
            attend,
            Rows(packed, groups) if pins else None,
        )
        lasts = [r + n - 1 for r, n, _ in parts[1 if b else 0 :]]
        logits = self.fast.logits(torch.cat([h[:b], h[lasts]]), Rows(head) if pins else None)
        return (logits[:b] if b else None), list(logits[b:])


QUANTS = ("none", *FAST_QUANTS)


def is_fast(model: object) -> bool:
    return isinstance(model, FastLlama)


def _native_decoder(model: FastLlama, k: list[torch.Tensor], v: list[torch.Tensor]):
    from omax.engine import native

    if not (native.NativeDecoder.supports(model) and native.enabled()):
        return None
    mod = native.module()
    return native.NativeDecoder(mod, model, k, v) if mod is not None else None


def make_runner(model: object, *, max_slots: int, max_len: int, prefix_rows: int = 0) -> Runner:
    """The runner for a loaded model: lean for ``FastLlama``, transformers otherwise."""
    if isinstance(model, FastLlama):
        return FastRunner(model, max_slots=max_slots, max_len=max_len, prefix_rows=prefix_rows)
    assert isinstance(model, torch.nn.Module)
    return Runner(model, max_slots=max_slots, max_len=max_len, prefix_rows=prefix_rows)

"""The model runner: forward passes of a ``FastDecoder`` over a slot-based static KV cache.

The cache holds ``max_slots`` decode slots, one staging slot (``max_slots``) where a
long prompt is prefilled chunk by chunk, and ``prefix_rows`` rows after it that keep
the KV of recently finished sequences for prompt-prefix reuse (``omax.engine.prefix``).
A short prompt is prefilled straight into the decode slot it will use. Decoding
sequences always occupy slots ``0..B-1`` so one decode step reads the cache through a
view (no gather) and runs all of them in ONE forward pass, with a key mask for their
different lengths (and each layer's sliding window). ``step`` adds the step's prompt
segments to that pass. Families the fast path does not cover run on
``omax.engine.generic.GenericRunner``, which has the same interface.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from omax.config import settings
from omax.engine.cuda_graphs import GraphDecoder
from omax.engine.fastpath import FastDecoder, window_mask
from omax.engine.linear import Rows
from omax.engine.runner_api import CacheRows, Runner, Segment, Segments
from omax.errors import EngineError

__all__ = ["CacheRows", "FastRunner", "Runner", "Segment", "Segments", "is_fast", "make_runner"]


class FastRunner(CacheRows):
    """The slot cache and batch step over a ``fastpath.FastDecoder``.

    Rows are tokens throughout (``[R, H]``), so every projection is one 2-D matmul.
    Decode folds the query heads that share a KV head into query rows of one SDPA call.
    """

    def __init__(  # noqa: D107
        self,
        model: FastDecoder,
        *,
        max_slots: int,
        max_len: int,
        prefix_rows: int = 0,
        native: bool = True,
        graphs: bool | None = None,
    ) -> None:
        """``native``: decode rows take the native step (``omax.engine.native``) if it
        is already built when the runner is made. ``graphs`` (default: unless
        ``omax.engine.cuda-graphs`` is "off"): on CUDA, decode steps replay captured CUDA
        graphs (``omax.engine.cuda_graphs``), which write padding rows into one spare
        cache column past ``max_len``."""
        super().__init__(max_slots, min(max_len, model.max_pos), prefix_rows)
        self.fast = model
        self.n_heads, self.n_kv, self.head_dim = model.n_heads, model.n_kv, model.head_dim
        self.group = self.n_heads // self.n_kv
        self.device, self.dtype = model.device, model.act
        cuda_graphs = self.device.type == "cuda" and (
            graphs if graphs is not None else settings().cuda_graphs != "off"
        )
        shape = (self.n_rows, self.n_kv, self.max_len + (1 if cuda_graphs else 0), self.head_dim)
        n = len(model.layers)
        # torch.empty: pages are only committed once written, so memory follows use.
        self.k = [torch.empty(shape, dtype=self.dtype, device=self.device) for _ in range(n)]
        self.v = [torch.empty(shape, dtype=self.dtype, device=self.device) for _ in range(n)]
        self.hw = [0] * shape[0]
        self.native = _native_decoder(model, self.k, self.v, self.max_len) if native else None
        self.graphs = GraphDecoder(self) if cuda_graphs else None

    INIT_BLOCK = 64

    def _ensure_init(self, b: int, length: int) -> None:
        """Zero the never-written positions below ``length`` of rows ``0..b-1`` (a batched
        step's shorter rows read them, masked: garbage there could be NaN). A row is
        zeroed ahead to a multiple of ``INIT_BLOCK`` positions: two small ops per layer
        each step, for every decoding row, cost a few percent of a step."""
        for s in range(b):
            if self.hw[s] < length:
                end = min(self.max_len, -(-length // self.INIT_BLOCK) * self.INIT_BLOCK)
                for k, v in zip(self.k, self.v, strict=True):
                    k[s, :, self.hw[s] : end].zero_()
                    v[s, :, self.hw[s] : end].zero_()
                self.hw[s] = end

    @property
    def bytes_per_token(self) -> int:
        return 2 * len(self.k) * self.n_kv * self.head_dim * self.k[0].element_size()

    def copy_slot(self, src: int, dst: int, length: int, start: int = 0) -> None:
        """Copy cached positions ``start..length-1`` of row ``src`` into row ``dst``."""
        if src == dst or length <= start:
            return
        self._wrote(dst, start, length)
        for k, v in zip(self.k, self.v, strict=True):
            k[dst, :, start:length].copy_(k[src, :, start:length])
            v[dst, :, start:length].copy_(v[src, :, start:length])

    def _wrote(self, row: int, start: int, end: int) -> None:
        """Positions ``start..end-1`` of ``row`` now hold finite values."""
        if start <= self.hw[row]:
            self.hw[row] = max(self.hw[row], end)

    def _masks(self, make) -> list:
        """``make(window)`` for each layer, computed once per distinct window."""
        done: dict[int | None, Any] = {}
        out = []
        for layer in self.fast.layers:
            if layer.window not in done:
                done[layer.window] = make(layer.window)
            out.append(done[layer.window])
        return out

    def _prefill_attend(self, t: int, start: int, slot: int):
        """``attend`` for ``t`` prompt rows at ``start..`` of ``slot`` (causal)."""
        end = start + t
        self._check_len(end)
        self._wrote(slot, start, end)
        q_pos = torch.arange(start, end, device=self.device)

        def make(window):
            if not start and (window is None or window >= t):
                return None  # plain causal
            return window_mask(q_pos, end, window, self.device)

        masks = self._masks(make)
        ks, vs, attention = self.k, self.v, self.fast.attention

        def attend(i, q, k, v):
            kc, vc = ks[i], vs[i]
            kc[slot, :, start:end] = k.transpose(0, 1)
            vc[slot, :, start:end] = v.transpose(0, 1)
            mask = masks[i]
            o = attention(
                q.transpose(0, 1).unsqueeze(0),
                kc[slot : slot + 1, :, :end],
                vc[slot : slot + 1, :, :end],
                mask,
                causal=mask is None,
            )
            return o[0].transpose(0, 1).reshape(t, -1)

        return attend

    def _decode_attend(self, positions: list[int], pos: torch.Tensor, pinned: Sequence[bool]):
        """``attend`` for one token in each of slots ``0..B-1`` at ``positions``.

        The rows share one SDPA call, keys padded to the longest and masked (and to each
        layer's sliding window); a pinned row gets a call of its own over exactly its
        keys, as it would alone (the padding changes the kernel's reduction, so the last
        bits)."""
        b = len(positions)
        dev = self.device
        length = int(max(positions)) + 1
        solo = [i for i, p in enumerate(pinned) if p]
        self._ensure_init(b, length)

        def make(window):
            ragged = b > 1 and min(positions) + 1 != length
            if not ragged and (window is None or length <= window):
                return None
            return window_mask(pos, length, window, dev)[:, None, None, :]

        masks = self._masks(make)
        ks, vs, nkv, g, hd = self.k, self.v, self.n_kv, self.group, self.head_dim
        idx = (torch.arange(b, device=dev), slice(None), pos)
        attention, windows = self.fast.attention, [x.window for x in self.fast.layers]

        def attend(i, q, k, v):
            kc, vc = ks[i], vs[i]
            kc[idx] = k
            vc[idx] = v
            q = q.view(b, nkv, g, hd)
            if len(solo) < b:
                # reshape: CUDA's SDPA kernels may return the query rows strided
                o = attention(q, kc[:b, :, :length], vc[:b, :, :length], masks[i]).reshape(b, -1)
            else:
                o = q.new_empty(b, nkv * g * hd)
            w = windows[i]
            for r in solo:
                n = positions[r] + 1
                first = max(0, n - w) if w is not None else 0
                kr, vr = kc[r : r + 1, :, first:n], vc[r : r + 1, :, first:n]
                o[r] = attention(q[r : r + 1], kr, vr).reshape(-1)
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
        if self.graphs is not None and not any(pinned):
            self._check_len(max(positions) + 1)
            logits = self.graphs.decode(token_ids, positions)
            if logits is not None:
                return logits
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
        """One batch step in ONE forward pass: decode rows first, then each segment's.

        Every projection reads its weights once for all of them (decode is memory
        bound, so a step that also prefills costs about what the larger part would
        alone), and many short prompts join in one step. Pinned rows take kernels that
        do not follow the batch (``linear.Rows``). With the native step, a pass with
        a pinned decode row runs the decode rows natively and the prompts apart: that
        row must take the kernels it takes in a step that only decodes. With no row
        pinned, the native step runs all of it (``_native_step``).
        """
        if not segments:
            return (self.decode(tokens, positions, pinned) if tokens else None), []
        if tokens and self.native is not None and any(pinned):
            return self.decode(tokens, positions, pinned), self.step([], [], segments)[1]
        if self._native_prompts(segments, pinned):
            return self._native_step(tokens, positions, segments)
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

    def _native_prompts(self, segments: Segments, pinned: Sequence[bool]) -> bool:
        """Whether the native step runs this step's prompts with its decode rows: where
        its own kernels run and no row is pinned (those keep the Python step's kernels).
        Its attention takes each prompt row over its own keys, and beat torch's flash
        attention at every prompt length measured (benchmarks/RESULTS.md)."""
        return (
            self.native is not None
            and self.native.prompts
            and not any(pinned)
            and not any(s.pinned for s in segments)
        )

    @torch.inference_mode()
    def _native_step(
        self, tokens: list[int], positions: list[int], segments: Segments
    ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """``step`` in one native call: decode rows in slots ``0..B-1``, then each
        segment's rows in its slot; logits of the decode rows and each segment's last."""
        b = len(tokens)
        ids, pos, slots = [*tokens], [*positions], list(range(b))
        if b:
            length = max(positions) + 1
            self._check_len(length)
            self._ensure_init(b, length)
        outputs = list(range(b))
        for seg in segments:
            end = seg.start + len(seg.ids)
            self._check_len(end)
            self._wrote(seg.row, seg.start, end)
            ids += seg.ids
            pos += range(seg.start, end)
            slots += [seg.row] * len(seg.ids)
            outputs.append(len(ids) - 1)
        assert self.native is not None
        logits = self.native.step(torch.tensor(ids, dtype=torch.long), pos, slots, outputs)
        return (logits[:b] if b else None), list(logits[b:])


def is_fast(model: object) -> bool:
    return isinstance(model, FastDecoder)


def _native_decoder(model: FastDecoder, k: list[torch.Tensor], v: list[torch.Tensor], max_len: int):
    from omax.engine import native

    if not (native.NativeDecoder.supports(model, max_len) and native.enabled()):
        return None
    mod = native.module()
    return native.NativeDecoder(mod, model, k, v) if mod is not None else None


def make_runner(model: object, *, max_slots: int, max_len: int, prefix_rows: int = 0) -> Runner:
    """The runner for a loaded model: ``FastRunner`` for a ``FastDecoder``, the generic
    runner (transformers' public forward and cache API) for anything else."""
    if isinstance(model, FastDecoder):
        return FastRunner(model, max_slots=max_slots, max_len=max_len, prefix_rows=prefix_rows)
    from omax.engine.generic import GenericRunner

    return GenericRunner(model, max_slots=max_slots, max_len=max_len, prefix_rows=prefix_rows)

"""The generic runner: any causal LM transformers can build, through its public API.

Families the fast path does not cover (``omax.engine.arch``) still run: each cache
row is a transformers ``DynamicCache`` and every row's step is one call of the
model's own ``forward`` with ``past_key_values`` (no reach into its submodules, so a
new transformers release that reorganises a model's internals does not break it).
Rows run one at a time, each reading the weights again (the fast path runs the whole
batch in one pass), behind the same slot interface (``FastRunner``'s), so the batcher,
prefix reuse and streaming work unchanged.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import Any

import torch

from omax.engine.runner_api import CacheRows
from omax.errors import EngineError


class GenericRunner(CacheRows):
    """``FastRunner``'s interface over a transformers ``PreTrainedModel``."""

    def __init__(self, model: Any, *, max_slots: int, max_len: int, prefix_rows: int = 0) -> None:
        if not callable(getattr(model, "forward", None)) or not hasattr(model, "config"):
            raise EngineError(f"{type(model).__name__} is not a model omax can run")
        super().__init__(max_slots, max_len, prefix_rows)
        self.model = model
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.rows: list[Any] = [None] * self.n_rows
        self.lens = [0] * len(self.rows)
        cfg = model.config
        text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        heads = int(getattr(text, "num_attention_heads", 1) or 1)
        kv = int(getattr(text, "num_key_value_heads", None) or heads)
        hd = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
        n_layers = int(getattr(text, "num_hidden_layers", 1))
        self.bytes_per_token = 2 * n_layers * kv * hd * p.element_size()
        # transformers 5.x renamed ``past_key_values`` to ``cache`` (argument and output)
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def copy_slot(self, src: int, dst: int, length: int, start: int = 0) -> None:
        """Row ``dst`` holds row ``src``'s first ``length`` positions."""
        if src == dst or length <= start:
            return
        self.rows[dst] = self._cropped(copy.deepcopy(self.rows[src]), length)
        self.lens[dst] = length

    def _cropped(self, cache: Any, length: int) -> Any:
        if cache is not None and cache.get_seq_length() > length:
            cache.crop(length)
        return cache

    def _new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def _run(self, row: int, ids: list[int], start: int) -> torch.Tensor:
        end = start + len(ids)
        if end > self.max_len:
            raise EngineError(f"sequence of {end} tokens exceeds the cache ({self.max_len})")
        cache = self.rows[row] if start else None
        if start and (cache is None or self.lens[row] < start):
            raise EngineError(f"cache row {row} holds {self.lens[row]} of {start} positions")
        cache = self._cropped(cache, start) if cache is not None else self._new_cache()
        out = self.model(
            input_ids=torch.tensor([ids], dtype=torch.long, device=self.device),
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_kw: cache},
        )
        self.rows[row] = getattr(out, self._cache_kw)
        self.lens[row] = end
        return out.logits[0, -1].float()

    @torch.inference_mode()
    def prefill(self, token_ids: list[int], start: int, slot: int | None = None) -> torch.Tensor:
        return self._run(self.staging if slot is None else slot, token_ids, start)

    @torch.inference_mode()
    def decode(
        self, token_ids: list[int], positions: list[int], pinned: Sequence[bool] = ()
    ) -> torch.Tensor:
        """One token for each of slots ``0..B-1``; each row alone, so any row computes
        the same in any batch."""
        return torch.stack(
            [
                self._run(r, [t], p)
                for r, (t, p) in enumerate(zip(token_ids, positions, strict=True))
            ]
        )

    @torch.inference_mode()
    def step(
        self,
        tokens: list[int],
        positions: list[int],
        segments: Sequence[Any] = (),
        pinned: Sequence[bool] = (),
    ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        last = [self._run(s.row, list(s.ids), s.start) for s in segments]
        return (self.decode(tokens, positions) if tokens else None), last

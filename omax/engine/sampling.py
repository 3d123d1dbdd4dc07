"""Per-request sampling on a batch of logits, in torch.

Each row has its own options and its own seeded ``torch.Generator``; a row's result
depends only on its logits, its options, its history and its generator, never on the
other rows, so a seeded request gives the same text alone or batched.

Order (as llama.cpp): penalties (repeat over ``repeat_last_n``, presence, frequency)
-> grammar mask (structured output) -> greedy if temperature <= 0 -> top_k ->
typical_p -> top_p -> min_p -> temperature -> draw. A row's grammar matcher is
advanced with the token chosen for it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from omax.engine.grammar import Matcher, apply_bitmask, mask_words
from omax.engine.request import SamplingOptions


@dataclass
class SamplerState:
    """What sampling remembers about one sequence."""

    options: SamplingOptions
    generator: torch.Generator | None
    history: list[int]  # prompt + generated ids (for penalties)
    grammar: Matcher | None = None  # structured output: allowed tokens per step

    @classmethod
    def create(
        cls, options: SamplingOptions, prompt_ids: list[int], grammar: Matcher | None = None
    ) -> SamplerState:
        gen = None
        if options.temperature > 0:
            seed = options.seed if options.seed >= 0 else random.getrandbits(63)
            gen = torch.Generator(device="cpu")
            gen.manual_seed(int(seed))
        return cls(options=options, generator=gen, history=list(prompt_ids), grammar=grammar)

    @property
    def needs_penalty(self) -> bool:
        o = self.options
        return o.repeat_last_n != 0 and (
            o.repeat_penalty != 1.0 or o.presence_penalty != 0.0 or o.frequency_penalty != 0.0
        )


def _apply_penalties(row: torch.Tensor, state: SamplerState) -> None:
    o = state.options
    n = len(state.history) if o.repeat_last_n < 0 else o.repeat_last_n
    window = state.history[-n:] if n else []
    if not window:
        return
    ids = torch.tensor(window, dtype=torch.long)
    uniq, counts = torch.unique(ids, return_counts=True)
    vals = row[uniq]
    if o.repeat_penalty != 1.0:
        vals = torch.where(vals > 0, vals / o.repeat_penalty, vals * o.repeat_penalty)
    vals = vals - counts.to(vals.dtype) * o.frequency_penalty - o.presence_penalty
    row[uniq] = vals


def _filter_sorted(probs: torch.Tensor, logp: torch.Tensor, o: SamplingOptions) -> int:
    """``probs`` sorted descending (1-D, renormalised); return the kept prefix length."""
    keep = probs.shape[0]
    if 0.0 < o.typical_p < 1.0:
        ent = -torch.where(probs > 0, probs * logp, 0.0).sum()  # masked: 0 * -inf
        order = torch.argsort((-logp - ent).abs())
        cum = torch.cumsum(probs[order], 0)
        cut = int(torch.searchsorted(cum, torch.tensor(o.typical_p)).item()) + 1
        mask = torch.zeros_like(probs, dtype=torch.bool)
        mask[order[:cut]] = True
        probs.masked_fill_(~mask, 0.0)
    if 0.0 < o.top_p < 1.0:
        cum = torch.cumsum(probs / probs.sum(), 0)
        keep = min(keep, int(torch.searchsorted(cum, torch.tensor(o.top_p)).item()) + 1)
    if o.min_p > 0.0:
        keep = min(keep, max(1, int((probs >= o.min_p * probs[0]).sum().item())))
    return keep


def sample(logits: torch.Tensor, states: list[SamplerState]) -> list[int]:
    """Choose one token per row of ``logits`` ([B, V]); rows map to ``states``.

    Sampling runs on the CPU whatever the model's device: the per-request generators,
    penalty windows and grammar masks live there, and one [B, V] copy per step is
    cheap next to the forward pass."""
    logits = logits.float().cpu()
    matchers = [(i, s.grammar) for i, s in enumerate(states) if s.grammar is not None]
    constrained = [i for i, _ in matchers]
    if constrained or any(s.needs_penalty for s in states):
        logits = logits.clone()
        for i, s in enumerate(states):
            if s.needs_penalty:
                _apply_penalties(logits[i], s)
    if constrained:
        mask = torch.empty((len(constrained), mask_words(logits.shape[-1])), dtype=torch.int32)
        for j, (_, m) in enumerate(matchers):
            m.fill(mask[j])
        rows = logits[constrained]
        apply_bitmask(rows, mask)
        logits[constrained] = rows
    # numpy's argmax runs in this thread; torch's splits a row of a large vocabulary
    # over OpenMP, whose woken threads then spin against the native step's own team.
    out = logits.numpy().argmax(-1).tolist()
    for i, s in enumerate(states):
        o = s.options
        if o.temperature <= 0:
            continue
        row = logits[i]
        k = o.top_k if 0 < o.top_k < row.shape[0] else row.shape[0]
        vals, idx = torch.topk(row, k) if k < row.shape[0] else torch.sort(row, descending=True)
        vals = vals / o.temperature
        logp = torch.log_softmax(vals, 0)
        probs = logp.exp()
        keep = _filter_sorted(probs, logp, o)
        p = probs[:keep]
        total = p.sum()
        u = torch.rand((), generator=s.generator) * total
        j = int(torch.searchsorted(torch.cumsum(p, 0), u, right=True).clamp(max=keep - 1))
        out[i] = int(idx[j])
    for i, m in matchers:
        m.advance(out[i])
    return out

"""Structured output: ``format`` ("json" or a JSON Schema) as a per-token logits mask.

Built on llguidance, chosen by measurement (benchmarks/grammar_bench.py, RESULTS.md):
it computes each token's mask and compiles a schema with no warm-up and no cache of
its own, so a constrained request adds little to the decode step it rides on.

``Grammars`` belongs to one engine (one tokenizer). ``Grammars.matcher(format)``
compiles the request's grammar (cached by the canonical schema text) and returns a
fresh ``Matcher`` for one sequence. Sampling asks each matcher for its allowed-token
bitmask before choosing, applies it with ``apply_bitmask``, then advances the matcher
with the chosen token. End-of-sequence tokens are allowed only where the grammar
accepts; once the grammar is complete only they are allowed.

Errors: an unusable ``format`` (wrong type, not a valid JSON Schema, unsupported
keywords) raises ``omax.errors.InvalidRequest`` with llguidance's reason.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from omax.errors import InvalidRequest

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

log = logging.getLogger(__name__)

# Ollama's "json" is any JSON object (llama.cpp's json grammar has an object root).
ANY_OBJECT: dict[str, Any] = {"type": "object"}
# Compact output, and no runs of whitespace for a small model to loop on.
_JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False}


def apply_bitmask(logits: torch.Tensor, mask: torch.Tensor) -> None:
    """Set ``logits[i, t]`` to -inf wherever bit ``t`` of ``mask[i]`` is 0 (in place).

    ``logits`` is [B, V]; ``mask`` is int32 [B, ceil(V' / 32)], little-endian bits as
    llguidance writes them. Columns beyond the mask's width are disallowed.
    """
    v = logits.shape[-1]
    bits = np.unpackbits(mask.numpy().view(np.uint8), axis=-1, bitorder="little")[:, :v]
    if bits.shape[-1] < v:
        bits = np.pad(bits, ((0, 0), (0, v - bits.shape[-1])))
    if logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.is_contiguous():
        # on CPU numpy's masked copy applies the mask more cheaply than masked_fill_
        np.copyto(logits.numpy(), np.float32(-np.inf), where=bits == 0)
    else:
        allowed = torch.from_numpy(bits).to(device=logits.device, dtype=torch.bool)
        logits.masked_fill_(~allowed, float("-inf"))


def mask_words(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


class Matcher:
    """One sequence's position in its grammar."""

    def __init__(self, inner, eos_ids: Iterable[int]) -> None:
        self._m = inner
        self._eos = sorted(eos_ids)

    def fill(self, row: torch.Tensor) -> None:
        """Write the allowed-token bitmask into ``row`` (int32, contiguous, CPU)."""
        if not self._m.is_error():
            self._m.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * row.element_size())
        if self._m.is_error():  # never leave a row with nothing allowed: end the sequence
            log.warning("grammar matcher failed: %s", self._m.get_error())
            row.zero_()
            for t in self._eos:
                if t // 32 < row.numel():
                    row[t // 32] |= _bit(t % 32)

    def advance(self, token: int) -> None:
        if not self._m.is_error():
            self._m.consume_token(token)


def _bit(i: int) -> int:
    """Bit ``i`` as a signed int32 value (bit 31 is negative)."""
    return -(2**31) if i == 31 else 1 << i


class Grammars:
    """Compiles request formats for one tokenizer; thread-safe; LRU-cached by schema."""

    def __init__(self, tokenizer, vocab_size: int, eos_ids: Iterable[int], cache: int = 64):
        import llguidance.hf

        self.vocab_size = vocab_size
        self.eos_ids = sorted(eos_ids)
        self._tok = llguidance.hf.from_tokenizer(
            tokenizer, n_vocab=vocab_size, eos_token=self.eos_ids or None
        )
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._size = cache
        self._lock = threading.Lock()

    @staticmethod
    def key(fmt: str | dict[str, Any]) -> str:
        """Canonical text of a format (the cache key); raises InvalidRequest if unusable."""
        if fmt == "json":
            fmt = ANY_OBJECT
        if not isinstance(fmt, dict):
            raise InvalidRequest(f'format must be "json" or a JSON Schema object, got {fmt!r}')
        try:
            return json.dumps(fmt, sort_keys=True, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"format is not JSON: {exc}") from exc

    def matcher(self, fmt: str | dict[str, Any]) -> Matcher:
        """A fresh matcher for ``fmt`` at the start of its grammar."""
        key = self.key(fmt)
        with self._lock:
            proto = self._cache.get(key)
            if proto is not None:
                self._cache.move_to_end(key)
        if proto is None:
            proto = self._compile(key)
            with self._lock:
                self._cache[key] = proto
                while len(self._cache) > self._size:
                    self._cache.popitem(last=False)
        return Matcher(proto.deep_copy(), self.eos_ids)

    def _compile(self, schema_text: str):
        from llguidance import LLMatcher

        try:
            grammar = LLMatcher.grammar_from_json_schema(schema_text, defaults=_JSON_OPTIONS)
        except ValueError as exc:
            raise InvalidRequest(f"invalid JSON Schema in format: {exc}") from exc
        err = LLMatcher.validate_grammar(grammar, self._tok)
        if err and not err.startswith("WARNING"):
            raise InvalidRequest(f"invalid JSON Schema in format: {err}")
        m = LLMatcher(self._tok, grammar, log_level=0)
        if m.is_error():
            raise InvalidRequest(f"invalid JSON Schema in format: {m.get_error()}")
        return m

"""``tokenizer.json`` and the tokenizer config from GGUF metadata, as transformers' GGUF
converter (``get_gguf_tokenizer`` + ``convert_gguf_tokenizer``) makes them, only fast.
The one difference in the text: BPE merges are written ``"a b"`` rather than ``["a","b"]``
where no piece holds a space (``compact_merges``), the same tokenizer, loaded faster.

The converter's cost is not in the ``tokenizers`` library but in Python around it: for
a sentencepiece vocabulary without merges (Gemma, Llama 2, Phi-3) it derives the merges
by trying every split of every token in a Python loop. ``derive_merges`` does the same
in numpy. Those builders are repeated here (a class, the token respelling Gemma needs,
Phi-3's normalizer) and checked against the converter by the tests; every other
tokenizer kind (byte-level BPE with merges in the file, T5, ...) goes through the
converter unchanged, which is fast enough once the metadata is parsed.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from omax.errors import ImportFailed
from omax.sharding.importers.ggufconfig import legacy_transformers

BLANK = "\u2581"  # sentencepiece's visible space
# str.isspace() is true for these and nothing else (none lies above U+3000)
WHITESPACE = np.array([c for c in range(0x3001) if chr(c).isspace()], dtype=np.uint32)
_P = np.uint64(0x9E3779B97F4A7C15)  # odd, so invertible modulo 2**64
_P_INV = np.uint64(pow(int(_P), -1, 2**64))
MERGES_KEY = '"merges":'


class _UseSlowPath(Exception):
    """The fast merge derivation cannot promise transformers' result (two strings hashed
    alike, NaN scores); derive the merges with transformers' own loop."""


def tokenizer_files(path: Path, metadata: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """``(tokenizer.json text or None without a vocabulary, tokenizer config)`` for the
    GGUF file at ``path`` whose parsed metadata is ``metadata``."""
    return tokenizer_job(path, metadata)()


def tokenizer_job(
    path: Path, metadata: Mapping[str, Any]
) -> Callable[[], tuple[str | None, dict[str, Any]]]:
    """What ``tokenizer_files`` does, in two steps: this call refuses a tokenizer no
    builder covers (ImportFailed), at once; the function it returns builds the
    tokenizer, the slow part, which an importer runs beside its tensor writes."""
    if legacy_transformers():
        legacy = _legacy_tokenizer(path)
        return lambda: legacy
    from transformers.integrations.gguf import gguf_tokenizer_mapping as conv

    arch = str(metadata["general.architecture"])
    tokenizer, config = _tokenizer_dict(metadata)
    if not tokenizer.get("tokens"):
        return lambda: (None, config)
    try:  # the converter's "cannot build a tokenizer from ..." names both
        conv.select_tokenizer_builder(arch, tokenizer.get("tokenizer_type"))
    except ValueError as err:
        raise ImportFailed(str(err)) from err

    def build() -> tuple[str | None, dict[str, Any]]:
        try:
            backend, merges = _convert(arch, tokenizer)
        except ValueError as err:
            raise ImportFailed(str(err)) from err
        text = backend.to_str()
        return (compact_merges(text) if merges is None else with_merges(text, merges)), config

    return build


def _legacy_tokenizer(path: Path) -> tuple[str | None, dict[str, Any]]:
    """transformers 4: ``load_gguf_checkpoint`` parses, its one converter builds."""
    from transformers.integrations.ggml import convert_gguf_tokenizer  # type: ignore[attr-defined]
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    parsed = load_gguf_checkpoint(os.fspath(path), return_tensors=False)
    if not parsed["tokenizer"].get("tokens"):
        return None, parsed["tokenizer_config"]
    backend, extra = convert_gguf_tokenizer(parsed["config"]["model_type"], parsed["tokenizer"])
    return compact_merges(backend.to_str()), {**parsed["tokenizer_config"], **extra}


def compact_merges(text: str) -> str:
    """The tokenizer.json ``text`` (as ``tokenizers`` writes it: compact, the model last,
    its merges last) with each BPE merge written ``"a b"`` rather than ``["a","b"]``.

    Both spellings make the same tokenizer, but ``tokenizers`` buffers the model twice
    before it builds it, and a pair is three buffered values where a string is one: for
    a large vocabulary the pairs are a large share of the load's time (all of it under
    the GIL) and most of its peak memory. Where a piece holds a space the string would
    be ambiguous: then, as for any other layout, ``text`` comes back unchanged."""
    at = text.rfind(MERGES_KEY + "[")
    if at < 0 or not text.endswith("]}}"):
        return text
    start = at + len(MERGES_KEY)
    section = text[start:-2]
    if " " in section:  # compact JSON has no space outside its strings
        return text
    collecting = gc.isenabled()
    gc.disable()  # half a million small lists: the collector's passes would triple the time
    try:  # a merge that is not a pair of strings fails the unpacking or the "+"
        lines = [a + " " + b for a, b in json.loads(section)]
    except (ValueError, TypeError):
        return text
    finally:
        if collecting:
            gc.enable()
    if not lines:
        return text
    return text[:start] + json.dumps(lines, ensure_ascii=False, separators=(",", ":")) + "}}"


def with_merges(text: str, merges: list[tuple[str, str]], compact: bool = True) -> str:
    """The tokenizer.json ``text`` of a BPE built without merges (``"merges":[]}}``,
    the model last) with ``merges`` written in, as ``compact_merges`` writes them
    (``compact``; else as pairs, as ``tokenizers`` writes them).

    Building the ``tokenizers`` BPE with half a million merges only to write them out
    again took most of a Gemma import's tokenizer time; the text is the same."""
    tail = MERGES_KEY + "[]}}"
    if not text.endswith(tail):
        raise ValueError("the tokenizer's JSON does not end with its empty merges")
    pairs = not compact or any(" " in a or " " in b for a, b in merges)
    items: list[Any] = [[a, b] for a, b in merges] if pairs else [a + " " + b for a, b in merges]
    body = json.dumps(items, ensure_ascii=False, separators=(",", ":"))
    return text[: -len(tail)] + MERGES_KEY + body + "}}"


def _tokenizer_dict(metadata: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """What ``get_gguf_tokenizer`` returns, from metadata already parsed."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING

    def value(key: str) -> Any:
        v = metadata[f"tokenizer.{key}"]
        return v.tolist() if isinstance(v, np.ndarray) else v

    tokenizer, config = (
        {name: value(key) for key, name in renames.items() if f"tokenizer.{key}" in metadata}
        for renames in (
            GGUF_TOKENIZER_MAPPING["tokenizer"],
            GGUF_TOKENIZER_MAPPING["tokenizer_config"],
        )
    )
    if tokenizer.get("tokenizer_type") == "llama":
        config.setdefault("add_bos_token", True)  # llama.cpp adds BOS unless told otherwise
    elif tokenizer.get("tokenizer_type") == "gemma4":
        config["add_bos_token"] = False  # its chat template writes <bos> itself
    tokens = tokenizer.get("tokens") or []
    for name, key in (
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"),
        ("pad_token", "padding_token_id"),
    ):
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        config[name] = (
            tokens[token_id] if isinstance(token_id, int) and token_id < len(tokens) else None
        )
    return tokenizer, config


def _convert(arch: str, tokenizer: dict[str, Any]) -> tuple[Any, list[tuple[str, str]] | None]:
    """The ``tokenizers.Tokenizer`` the converter would build, and None; or, for a
    sentencepiece vocabulary whose merges are derived here, that tokenizer built
    without them and the merges (``with_merges`` writes them into its JSON)."""
    from transformers.integrations.gguf import gguf_tokenizer_mapping as conv

    builder = conv.select_tokenizer_builder(arch, tokenizer.get("tokenizer_type"))
    spm = (conv.sentencepiece_tokenizer, conv.gemma_tokenizer, conv.phi3_tokenizer)
    if "merges" in tokenizer or builder not in spm:
        return conv.convert_gguf_tokenizer(arch, tokenizer)[0], None
    from tokenizers import normalizers
    from transformers import GemmaTokenizer, LlamaTokenizer

    tokens = list(tokenizer["tokens"])
    if builder is conv.gemma_tokenizer:
        # Gemma stores a token of blanks as real spaces and ranks merges by file order.
        for i in blank_tokens(tokens):
            tokens[i] = BLANK * len(tokens[i])
        scores = -np.arange(len(tokens), dtype=np.float64)
    else:
        scores = np.asarray(tokenizer["scores"], dtype=np.float64)
    vocab = dict(zip(tokens, range(len(tokens)), strict=True))
    try:
        merges = derive_merges(vocab, scores)
    except _UseSlowPath:
        from transformers.tokenization_utils_base import generate_merges

        merges = generate_merges(vocab, dict(zip(tokens, scores.tolist(), strict=True)))
    cls = GemmaTokenizer if builder is conv.gemma_tokenizer else LlamaTokenizer
    built = cls(vocab=vocab, merges=[])
    if builder is conv.phi3_tokenizer:
        built.backend_tokenizer.normalizer = normalizers.Sequence(
            [normalizers.Prepend(prepend=BLANK), normalizers.Replace(pattern=" ", content=BLANK)]
        )
        built.backend_tokenizer.pre_tokenizer = None
    built = conv.add_gguf_special_tokens(built, tokenizer)
    return conv.set_split_regex(built, tokenizer).backend_tokenizer, list(merges)


def blank_tokens(tokens: list[str]) -> np.ndarray:
    """Indices of the tokens that hold a space and nothing but whitespace."""
    chars, starts, lengths = _code_points(tokens)
    spaces = _segment_sums(chars == 32, starts, lengths)
    blanks = _segment_sums(np.isin(chars, WHITESPACE), starts, lengths)
    return np.flatnonzero((spaces > 0) & (blanks == lengths))


def derive_merges(vocab: Mapping[str, int], scores: np.ndarray) -> list[tuple[str, str]]:
    """The BPE merges a vocabulary implies, in transformers' ``generate_merges`` order.

    ``vocab`` is ``{token: id}`` as ``dict(zip(tokens, range(n)))`` builds it: distinct
    tokens in first-seen order, each with its last id. ``scores`` are by id. Every split
    of a token into two tokens of ``vocab`` is a merge: best token score first, then the
    longer left piece, then the longer right piece, then ``vocab`` order. Pieces are
    found by hashing every substring at a split point and confirmed character by
    character, so the result is exact.
    """
    words = list(vocab)
    ids = np.fromiter(vocab.values(), dtype=np.int64, count=len(words))
    score = np.asarray(scores, dtype=np.float64)[ids]
    if np.isnan(score).any():
        raise _UseSlowPath("NaN scores sort as Python sorts them, not as numpy does")
    chars, starts, lengths = _code_points(words)
    prefix = _prefix_hashes(chars)
    table = _HashTable(_hash(prefix, starts, starts + lengths))

    n_splits = np.maximum(lengths - 1, 0)
    word = np.repeat(np.arange(len(words)), n_splits)
    left_len = _ranks_within(n_splits) + 1
    a = starts[word]
    left = table.find(_hash(prefix, a, a + left_len))
    has_left = left >= 0
    word, left_len, left, a = (x[has_left] for x in (word, left_len, left, a))
    m = a + left_len
    right_len = lengths[word] - left_len
    right = table.find(_hash(prefix, m, m + right_len))
    keep = right >= 0
    word, left_len, right_len, left, right, a, m = (
        x[keep] for x in (word, left_len, right_len, left, right, a, m)
    )
    exact = (
        np.array_equal(lengths[left], left_len)
        and np.array_equal(lengths[right], right_len)
        and np.array_equal(chars[_ranges(a, left_len)], chars[_ranges(starts[left], left_len)])
        and np.array_equal(chars[_ranges(m, right_len)], chars[_ranges(starts[right], right_len)])
    )
    if not exact:
        raise _UseSlowPath("a piece hashed like a token it is not")
    rank = np.lexsort((word, -right_len, -left_len, -score[word]))
    pieces = np.array(words, dtype=object)
    return list(zip(pieces[left[rank]].tolist(), pieces[right[rank]].tolist(), strict=True))


def _code_points(words: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(all code points concatenated, start of each word, length of each word)``."""
    chars = np.frombuffer("".join(words).encode("utf-32-le"), dtype=np.uint32)
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    starts = np.cumsum(lengths) - lengths
    return chars, starts, lengths


def _segment_sums(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    total = np.concatenate(([0], np.cumsum(values, dtype=np.int64)))
    return total[starts + lengths] - total[starts]


def _ranks_within(counts: np.ndarray) -> np.ndarray:
    """0, 1, ..., counts[0]-1, 0, 1, ..., counts[1]-1, ..."""
    return np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenated ``range(start, start + length)`` of every pair."""
    return np.repeat(starts, lengths) + _ranks_within(lengths)


def _prefix_hashes(chars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Running sums of ``(c + 1) * P**i`` and the powers of ``P``'s inverse (mod 2**64)."""
    n = len(chars)
    powers = np.concatenate(([np.uint64(1)], np.cumprod(np.full(n, _P, dtype=np.uint64))))
    inverse = np.concatenate(([np.uint64(1)], np.cumprod(np.full(n, _P_INV, dtype=np.uint64))))
    sums = np.concatenate(([np.uint64(0)], np.cumsum((chars.astype(np.uint64) + 1) * powers[:n])))
    return sums, inverse


def _hash(prefix: tuple[np.ndarray, np.ndarray], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The hash of ``chars[a:b]`` for every pair, independent of where it sits, with its
    bits mixed (splitmix64's finaliser, a bijection) so the top bits spread."""
    sums, inverse = prefix
    h = (sums[b] - sums[a]) * inverse[a]
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h


class _HashTable:
    """Distinct-token indices by hash: the hashes sorted, cut into buckets by their top
    bits, so a lookup scans a bucket (a few entries) instead of binary-searching."""

    def __init__(self, hashes: np.ndarray) -> None:
        self.order = np.argsort(hashes)
        self.sorted = hashes[self.order]
        if (self.sorted[1:] == self.sorted[:-1]).any():
            raise _UseSlowPath("two tokens hash alike")
        bits = max(1, int(len(hashes)).bit_length())  # about two buckets per token
        self.shift = np.uint64(64 - bits)
        first = np.arange((1 << bits) + 1, dtype=np.uint64)
        self.bounds = np.searchsorted(self.sorted >> self.shift, first)

    def find(self, hashes: np.ndarray) -> np.ndarray:
        """The distinct-token index with each hash, or -1."""
        found = np.full(len(hashes), -1, dtype=np.int64)
        if len(self.sorted) == 0:
            return found
        bucket = (hashes >> self.shift).astype(np.int64)
        at, end = self.bounds[bucket], self.bounds[bucket + 1]
        for _ in range(int(np.diff(self.bounds).max())):
            live = np.flatnonzero(at < end)
            hit = live[self.sorted[at[live]] == hashes[live]]
            found[hit] = self.order[at[hit]]
            at[live] += 1
        return found

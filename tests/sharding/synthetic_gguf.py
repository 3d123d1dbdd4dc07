"""Small GGUF files written with ``gguf.GGUFWriter``: the metadata shapes of the
architectures omax runs, toy vocabularies, and tensors of any GGML type."""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import gguf
import numpy as np

# The keys llama.cpp writes for each architecture, with toy values.
ARCH_KEYS: dict[str, dict[str, Any]] = {
    "llama": {
        "context_length": 256,
        "embedding_length": 32,
        "block_count": 2,
        "feed_forward_length": 64,
        "attention.head_count": 4,
        "attention.head_count_kv": 2,
        "rope.freq_base": 10000.0,
        "attention.layer_norm_rms_epsilon": 1e-5,
        "rope.dimension_count": 8,
        "vocab_size": 300,
    },
    "qwen2": {
        "context_length": 512,
        "embedding_length": 32,
        "block_count": 2,
        "feed_forward_length": 64,
        "attention.head_count": 4,
        "attention.head_count_kv": 2,
        "rope.freq_base": 1000000.0,
        "attention.layer_norm_rms_epsilon": 1e-6,
    },
    "qwen3": {
        "context_length": 512,
        "embedding_length": 32,
        "block_count": 2,
        "feed_forward_length": 64,
        "attention.head_count": 4,
        "attention.head_count_kv": 2,
        "attention.key_length": 16,
        "attention.value_length": 16,
        "rope.freq_base": 1000000.0,
        "attention.layer_norm_rms_epsilon": 1e-6,
    },
    "gemma2": {
        "context_length": 512,
        "embedding_length": 32,
        "block_count": 2,
        "feed_forward_length": 64,
        "attention.head_count": 4,
        "attention.head_count_kv": 2,
        "attention.key_length": 8,
        "attention.value_length": 8,
        "attention.layer_norm_rms_epsilon": 1e-6,
        "attention.sliding_window": 64,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
    },
    "gemma3": {
        "context_length": 512,
        "embedding_length": 32,
        "block_count": 2,
        "feed_forward_length": 64,
        "attention.head_count": 4,
        "attention.head_count_kv": 1,
        "attention.key_length": 8,
        "attention.value_length": 8,
        "rope.freq_base": 1000000.0,
        "attention.layer_norm_rms_epsilon": 1e-6,
        "attention.sliding_window": 64,
    },
    "phi3": {
        "context_length": 4096,
        "rope.scaling.original_context_length": 4096,
        "embedding_length": 32,
        "feed_forward_length": 64,
        "block_count": 2,
        "attention.head_count": 4,
        "attention.head_count_kv": 4,
        "attention.layer_norm_rms_epsilon": 1e-5,
        "rope.dimension_count": 8,
        "rope.freq_base": 10000.0,
        "attention.sliding_window": 2047,
    },
}


def spm_vocab(seed: int = 0, size: int = 400) -> tuple[list[str], list[float], list[int]]:
    """A sentencepiece-like vocabulary: specials, byte tokens, then random pieces over
    a small alphabet (so many split into other pieces), with tied scores, repeats,
    blank tokens and control / user-defined tokens."""
    rng = random.Random(seed)
    tokens = ["<unk>", "<s>", "</s>", "<pad>", "<mask>", "<bos>", "<eos>"]
    types = [2, 3, 3, 3, 3, 3, 3]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256
    alphabet = ["a", "b", "\u2581", "é", "日", "本", "x"]
    seen: set[str] = set()
    while len(seen) < size:
        seen.add("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 5))))
    pieces = sorted(seen)
    rng.shuffle(pieces)
    pieces += [pieces[3], pieces[10]]  # listed twice, as some files do
    pieces += ["  ", "   ", "\n", "\n\n", " \n", "\t"]  # Gemma's blank tokens
    tokens += pieces
    types += [1] * len(pieces)
    tokens += ["<start_of_turn>", "<end_of_turn>", "<think>", "</think>"]
    types += [3, 3, 4, 4]
    scores = [0.0] * (len(tokens) - len(pieces) - 4)
    scores += [float(-rng.randint(0, 40)) for _ in pieces]  # many ties
    scores += [0.0] * 4
    return tokens, scores, types


def write_gguf(
    path: Path,
    arch: str,
    *,
    keys: dict[str, Any] | None = None,
    name: str | None = None,
    tokenizer: str | None = None,
    tokens: list[str] | None = None,
    scores: list[float] | None = None,
    types: list[int] | None = None,
    merges: list[str] | None = None,
    pre: str | None = None,
    tensors: Iterable[tuple[str, np.ndarray, gguf.GGMLQuantizationType | None]] = (),
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a GGUF with ``{arch}.<key>`` metadata, an optional tokenizer and
    ``(name, data, raw type or None)`` tensors; an F32 embedding when none given."""
    w = gguf.GGUFWriter(path, arch)
    if name is not None:
        w.add_name(name)
    for key, value in (ARCH_KEYS.get(arch, {}) if keys is None else keys).items():
        _add(w, f"{arch}.{key}", value)
    for key, value in (extra or {}).items():
        _add(w, key, value)
    if tokenizer is not None:
        w.add_tokenizer_model(tokenizer)
        if pre is not None:
            w.add_tokenizer_pre(pre)
        w.add_token_list(tokens or [])
        if scores is not None:
            w.add_token_scores(scores)
        if types is not None:
            w.add_token_types(types)
        if merges is not None:
            w.add_token_merges(merges)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
    tensors = list(tensors) or [("token_embd.weight", np.ones((4, 32), np.float32), None)]
    for tname, data, raw_type in tensors:
        w.add_tensor(tname, data, raw_dtype=raw_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _add(w: gguf.GGUFWriter, key: str, value: Any) -> None:
    if isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, int):
        w.add_uint32(key, value)
    elif isinstance(value, float):
        w.add_float32(key, value)
    elif isinstance(value, str):
        w.add_string(key, value)
    else:
        w.add_array(key, value)

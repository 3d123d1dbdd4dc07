"""Tiny random causal LMs as Hugging Face folders, for cluster tests that need many
models that load in well under a second. They borrow all-MiniLM-L6-v2's tokenizer
(a real tokenizer.json) so text goes in and comes out; what they say is noise."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from omax.sharding.bundled import minilm_folder_path

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


def tiny_llama(folder: Path, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Write a random LlamaForCausalLM with a 30,522-token vocabulary to ``folder``."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=30522,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=101,
        eos_token_id=102,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    source = minilm_folder_path()
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, folder / name)
    return folder

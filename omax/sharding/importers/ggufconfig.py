"""A Hugging Face config from GGUF metadata, as transformers' ``load_gguf_checkpoint``
builds it, over metadata that is already parsed.

transformers' key tables (``GGUF_CONFIG_MAPPING``, ``GGUF_CONFIG_DEFAULTS_MAPPING``)
are the source of truth; this module repeats only the generic walk over them and the
renames around it. The few architectures whose config transformers builds with code of
its own (T5, StableLM, LFM2, gpt-oss, MiniMax-M2, Gemma 4) go through
``load_gguf_checkpoint`` itself, which re-reads the file the slow way.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from omax.errors import ImportFailed
from omax.sharding.support import ModelClasses, build_problem, transformers_classes

# llama.cpp spelling -> transformers spelling, as load_gguf_checkpoint renames
RENAMES = {
    "qwen2moe": "qwen2_moe",
    "qwen3moe": "qwen3_moe",
    "gpt-oss": "gpt_oss",
    "minimax-m2": "minimax_m2",
}
# substrings of the architectures whose config transformers builds with code of its own
OWN_CODE = ("t5", "stablelm", "lfm2", "gpt-oss", "gpt_oss", "minimax-m2", "gemma4")
TIED_ALWAYS = ("falcon", "bloom")
TEXT_ONLY = {"gemma3": "gemma3_text"}  # the GGUF holds only the text backbone


def supported_architectures(classes: ModelClasses | None = None) -> list[str]:
    """GGUF ``general.architecture`` values transformers maps to a config and can build."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    classes = classes or transformers_classes()
    back = {v: k for k, v in RENAMES.items()} | {"umt5": None}  # umt5 is a t5 file
    names = [back.get(k, k) for k in GGUF_CONFIG_MAPPING if k not in ("general", "tokenizer")]
    return sorted(
        name
        for name in names
        if name is not None and build_problem(model_type_of(name), classes) is None
    )


def model_type_of(arch: str) -> str:
    """The transformers model type a GGUF architecture becomes (mistral aside)."""
    model_type = RENAMES.get(arch, arch)
    return TEXT_ONLY.get(model_type, model_type)


def hf_config(path: Path, metadata: Mapping[str, Any], tensor_names: Sequence[str]) -> dict:
    """The config dict ``load_gguf_checkpoint(path)["config"]`` returns for this file."""
    from transformers.integrations import ggml

    mapping: Mapping[str, Any] = ggml.GGUF_CONFIG_MAPPING
    defaults: Mapping[str, Any] = getattr(ggml, "GGUF_CONFIG_DEFAULTS_MAPPING", {})

    arch = str(metadata["general.architecture"])
    if legacy_transformers() or any(part in arch for part in OWN_CODE):
        return _by_transformers(path, arch)
    model_type = RENAMES.get(arch, arch)
    if metadata.get("general.name") == "mistral" and "llama" in arch:
        model_type = "mistral"  # transformers' test is list membership: an exact match
    if arch not in mapping and model_type not in mapping:
        raise ImportFailed(
            f"{path}: architecture {arch!r} is not supported: transformers cannot map its "
            f"GGUF metadata to a config; supported architectures: "
            + ", ".join(supported_architectures())
        )
    config: dict[str, Any] = {
        "tie_word_embeddings": "output.weight" not in tensor_names or arch in TIED_ALWAYS
    }
    for key, value in defaults.get(model_type, {}).items():
        config.setdefault(key, value)
    for key, raw in metadata.items():
        prefix, _, rest = key.replace(arch, model_type).partition(".")
        name = mapping.get(prefix, {}).get(rest)
        if name is None or name == -1:
            continue
        value = _plain(raw)
        if isinstance(value, str) and arch in value:
            value = value.replace(arch, model_type)
        config[name] = value
    config["model_type"] = TEXT_ONLY.get(config["model_type"], config["model_type"])
    tokens = metadata.get("tokenizer.ggml.tokens")
    if "vocab_size" not in config and isinstance(tokens, list):
        config["vocab_size"] = len(tokens)
    return config


@functools.cache
def legacy_transformers() -> bool:
    """Whether transformers predates its ``integrations.gguf`` package (version 4), whose
    tables and converter this importer follows; then transformers does all the work."""
    try:
        import transformers.integrations.gguf  # noqa: F401
    except ImportError:
        return True
    return False


def _plain(raw: Any) -> Any:
    """A metadata value as transformers' field parser returns it: one-element arrays
    become their element."""
    if isinstance(raw, np.ndarray):
        raw = raw.tolist()
    if isinstance(raw, list) and len(raw) == 1:
        return raw[0]
    return raw


def _by_transformers(path: Path, arch: str) -> dict:
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    try:
        return dict(load_gguf_checkpoint(os.fspath(path), return_tensors=False)["config"])
    except Exception as err:
        raise ImportFailed(f"{path}: cannot map GGUF metadata of {arch!r}: {err}") from err

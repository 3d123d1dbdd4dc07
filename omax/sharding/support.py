"""What omax can run, decided from plain data: GGML tensor types and model types.

An importer refuses a model here, before it writes a blob, with a message that names
what is missing and lists what is supported. ``transformers_classes`` reads the
tables the checks run against from transformers; the checks themselves take them as
arguments.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

# GGML tensor types the engine dequantises (transformers' torch kernels, gguf's numpy
# fallback), then the plain types stored as typed arrays.
QUANTIZED_TYPES = (
    "Q8_0",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
)
PLAIN_TYPES = ("F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64")
SUPPORTED_TENSOR_TYPES = PLAIN_TYPES + QUANTIZED_TYPES


def unsupported_tensor_types(tensors: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """``{type: [tensor names]}`` for the ``(tensor name, type name)`` pairs omax
    cannot run, in first-seen order; empty when every tensor is supported."""
    found: dict[str, list[str]] = {}
    for name, type_name in tensors:
        if type_name not in SUPPORTED_TENSOR_TYPES:
            found.setdefault(type_name, []).append(name)
    return found


def describe_unsupported_types(found: dict[str, list[str]]) -> str:
    """One sentence naming each unsupported type, how many tensors hold it, and the
    supported types."""
    parts = [
        f"{type_name} ({len(names)} tensor{'s' * (len(names) > 1)}, e.g. {names[0]})"
        for type_name, names in found.items()
    ]
    return (
        f"unsupported tensor type{'s' * (len(parts) > 1)} {', '.join(parts)}; "
        f"supported tensor types: {', '.join(SUPPORTED_TENSOR_TYPES)}"
    )


@dataclass(frozen=True)
class ModelClasses:
    """Model types transformers can configure, and those it has a causal-LM or a base
    model class for."""

    configs: frozenset[str]
    causal_lm: frozenset[str]
    base: frozenset[str]


def build_problem(model_type: str, classes: ModelClasses) -> str | None:
    """Why transformers cannot build ``model_type``, or None when it can."""
    if model_type not in classes.configs:
        return f"transformers has no configuration class for model type {model_type!r}"
    if model_type not in classes.causal_lm and model_type not in classes.base:
        return f"transformers has no causal-LM or base model class for model type {model_type!r}"
    return None


@functools.cache
def transformers_classes() -> ModelClasses:
    """The tables of the installed transformers (imports torch through its auto module)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_MAPPING_NAMES,
    )

    return ModelClasses(
        configs=frozenset(CONFIG_MAPPING_NAMES),
        causal_lm=frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES),
        base=frozenset(MODEL_MAPPING_NAMES),
    )

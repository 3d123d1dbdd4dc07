"""What the engine needs to build a model, apart from the weights.

``ModelSpec`` is the engine's input contract; the model store (omax.sharding) fills it
from a manifest, tests fill it from a GGUF file or an HF folder. Weights travel
separately as an iterable of ``omax.sharding.tensors.RawTensor`` so they can stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class ModelSpec:
    """An HF-style ``config`` plus tokenizer, template and defaults.

    - ``format``: ``"gguf"`` (tensor names as in the gguf file) or ``"safetensors"``
      (HF names).
    - ``tokenizer_json``: the content of a ``tokenizer.json``.
    - ``tokenizer_config``: bos/eos tokens, ``chat_template`` and friends.
    - ``template``: a jinja chat template overriding the tokenizer's (empty = none).
    - ``system``: the default system prompt (empty = none).
    - ``parameters``: default sampling options (Ollama ``options`` keys).
    - ``pooling``: sentence-transformers pooling config for embedding models, e.g.
      ``{"pooling_mode_mean_tokens": True, "max_seq_length": 256}``; None otherwise.
    """

    config: dict[str, Any]
    tokenizer_json: str
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    template: str = ""
    system: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    pooling: dict[str, Any] | None = None
    format: Literal["gguf", "safetensors"] = "safetensors"

    @property
    def is_generative(self) -> bool:
        archs = self.config.get("architectures") or []
        if archs:
            return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
        return self.pooling is None

    @property
    def context_length(self) -> int:
        return int(self.config.get("max_position_embeddings") or 2048)

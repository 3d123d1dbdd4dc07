"""Embeddings: pooled hidden states, batched, truncated to the model's context.

Pooling follows the sentence-transformers pooling config (mean / cls / last token);
generative models use the mean of the last hidden state (as Ollama does). ``/api/embed``
wants unit vectors (``normalize=True``); ``/api/embeddings`` wants them raw.
``dimensions`` truncates and then renormalises.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from omax.engine.loader import LoadedModel
from omax.engine.request import EmbedRequest
from omax.errors import InvalidRequest

BATCH = 64


def pooling_mode(pooling: dict | None) -> str:
    if not pooling:
        return "mean"
    if pooling.get("pooling_mode_cls_token"):
        return "cls"
    if pooling.get("pooling_mode_lasttoken"):
        return "last"
    return "mean"


def _pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "cls":
        return hidden[:, 0]
    if mode == "last":
        idx = mask.sum(1) - 1  # right padding
        return hidden[torch.arange(hidden.shape[0]), idx]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


@torch.inference_mode()
def embed(lm: LoadedModel, req: EmbedRequest) -> tuple[list[list[float]], int]:
    """Return (vectors, prompt tokens counted)."""
    spec, tok = lm.spec, lm.tokenizer
    max_len = int((spec.pooling or {}).get("max_seq_length") or spec.context_length)
    if req.options.num_ctx > 0 and not spec.pooling:
        max_len = min(max_len, req.options.num_ctx)
    mode = pooling_mode(spec.pooling)
    model = lm.model.model if spec.is_generative else lm.model
    tok.padding_side = "right"
    # Sort by length so each batch pads little; restore the order at the end.
    order = sorted(range(len(req.inputs)), key=lambda i: len(req.inputs[i]))
    out: list[list[float] | None] = [None] * len(req.inputs)
    n_tokens = 0
    for b in range(0, len(order), BATCH):
        idx = order[b : b + BATCH]
        texts = [req.inputs[i] for i in idx]
        if not req.truncate:
            lens = [len(tok.encode(t)) for t in texts]
            if max(lens) > max_len:
                raise InvalidRequest("input length exceeds the context length")
        enc = tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        enc = {
            k: v.to(lm.device)
            for k, v in enc.items()
            if k in ("input_ids", "attention_mask", "token_type_ids")
        }
        n_tokens += int(enc["attention_mask"].sum())
        hidden = model(**enc).last_hidden_state
        vec = _pool(hidden, enc["attention_mask"], mode).float()
        if req.dimensions:
            vec = vec[:, : req.dimensions]
        if req.normalize or req.dimensions:
            vec = F.normalize(vec, p=2, dim=1)
        for i, v in zip(idx, vec.cpu().tolist(), strict=True):
            out[i] = v
    return [v for v in out if v is not None], n_tokens

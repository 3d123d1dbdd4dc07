"""MiniLM embeddings match a direct transformers reference (mean pool + L2)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from omax.engine.engine import Engine
from omax.engine.request import EmbedRequest

from .conftest import MINILM_DIR, hf_folder_spec, safetensors_raw

SENTENCES = (
    "The cat sits on the mat.",
    "A dog barks.",
    "omax serves models from Dask.",
    "Ünïcödé text ✓ works",
    "short",
)


@pytest.fixture(scope="module")
def minilm():
    eng = Engine.load(hf_folder_spec(MINILM_DIR), safetensors_raw(MINILM_DIR))
    yield eng
    eng.close()


def reference(sentences):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(MINILM_DIR))
    model = AutoModel.from_pretrained(str(MINILM_DIR)).eval()
    enc = tok(list(sentences), padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    return F.normalize((h * m).sum(1) / m.sum(1), dim=1)


def test_minilm_matches_reference(minilm):
    res = minilm.embed(EmbedRequest(model="m", inputs=SENTENCES))
    got = torch.tensor(res.embeddings)
    ref = reference(SENTENCES)
    cos = F.cosine_similarity(got, ref, dim=1)
    assert cos.min() > 0.9999
    assert res.prompt_eval_count > 0
    assert torch.allclose(got.norm(dim=1), torch.ones(len(SENTENCES)), atol=1e-5)


def test_raw_and_dimensions(minilm):
    raw = minilm.embed(EmbedRequest(model="m", inputs=("hello",), normalize=False))
    assert abs(torch.tensor(raw.embeddings[0]).norm().item() - 1.0) > 1e-3
    d = minilm.embed(EmbedRequest(model="m", inputs=("hello",), dimensions=64))
    v = torch.tensor(d.embeddings[0])
    assert v.shape == (64,) and abs(v.norm().item() - 1.0) < 1e-5


def test_generative_model_embeds(smollm2_engine):
    res = smollm2_engine.embed(EmbedRequest(model="s", inputs=("hi there", "another one")))
    assert len(res.embeddings) == 2 and len(res.embeddings[0]) == 576

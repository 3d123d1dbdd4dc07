import json

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize
from tokenizers import Tokenizer

from omax.errors import ImportFailed
from omax.sharding.modelstore import ModelStore
from omax.sharding.zarrstore import read_tensors


def test_tensors_byte_identical_and_dequantise(smol_store, smollm2_path):
    store, report = smol_store
    digest, m = store.resolve("smollm2:135m")
    assert digest == report.digest
    reader = gguf.GGUFReader(smollm2_path)
    got = {t.name: t for t in read_tensors(store.blobs, m)}
    assert len(got) == len(reader.tensors) == 272
    for t in reader.tensors:
        raw = got[t.name]
        src = np.asarray(t.data)
        assert raw.ggml_type == t.tensor_type.name
        assert raw.data.tobytes() == src.tobytes(), t.name
        assert raw.shape == tuple(int(s) for s in reversed(t.shape.tolist()))
        if t.tensor_type.name in ("Q4_1", "Q8_0"):
            assert raw.dtype == "quantized" and raw.data.dtype == np.uint8
            ours = dequantize(raw.data, t.tensor_type)
            assert ours.shape == raw.shape
            assert np.array_equal(ours, dequantize(src, t.tensor_type))


def test_metadata(smol_store):
    store, _ = smol_store
    _, m = store.resolve("smollm2:135m")
    assert m.format == "gguf" and m.family == "llama"
    assert m.config["model_type"] == "llama"
    assert m.config["architectures"] == ["LlamaForCausalLM"]
    assert m.config["hidden_size"] == 576 and m.config["num_hidden_layers"] == 30
    assert m.details["parameter_size"] == "135M"
    assert m.details["quantization_level"] == "Q4_1"
    assert m.model_info["general.architecture"] == "llama"
    assert m.model_info["llama.context_length"] == 8192
    assert m.model_info["tokenizer.ggml.tokens"] is None
    assert "<|im_start|>" in m.template
    assert m.tokenizer_config["eos_token"] == "<|im_end|>"
    assert m.license == "apache-2.0"
    tok = Tokenizer.from_str(store.blobs.get(m.tokenizer).decode())
    ids = tok.encode("<|im_start|>user\nHello<|im_end|>").ids
    assert ids[0] == 1 and tok.decode(ids, skip_special_tokens=False).endswith("<|im_end|>")
    json.dumps(m.to_dict())  # plain JSON all the way down


@pytest.fixture
def empty_store(tmp_path):
    store = ModelStore(str(tmp_path / "store"))
    store.catalog.set("keep", "sha256:" + "0" * 64, 1)
    return store


def _catalog_state(store):
    return store.catalog.read()


def test_truncated_gguf(tmp_path, smollm2_path, empty_store):
    bad = tmp_path / "trunc.gguf"
    with open(smollm2_path, "rb") as f:
        bad.write_bytes(f.read(40 << 20))
    before = _catalog_state(empty_store)
    with pytest.raises(ImportFailed, match="trunc.gguf.*truncated"):
        empty_store.import_path(bad, "broken")
    assert _catalog_state(empty_store) == before


@pytest.mark.parametrize(
    "content,reason",
    [(b"NOPE" + b"\0" * 100, "not a GGUF"), (b"GGUF\x03\0\0\0" + b"\xff" * 64, "corrupt")],
)
def test_corrupt_gguf(tmp_path, empty_store, content, reason):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    before = _catalog_state(empty_store)
    with pytest.raises(ImportFailed, match=f"bad.gguf.*{reason}"):
        empty_store.import_path(bad, "broken")
    assert _catalog_state(empty_store) == before


def test_unknown_architecture(tmp_path, empty_store):
    path = tmp_path / "alien.gguf"
    w = gguf.GGUFWriter(path, "alienformer")
    w.add_tensor("w", np.ones((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ImportFailed, match="alien.gguf.*alienformer"):
        empty_store.import_path(path, "alien")
    assert [e.name for e in empty_store.list()] == ["keep:latest"]

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from omax.errors import ImportFailed
from omax.sharding.modelstore import ModelStore
from omax.sharding.zarrstore import read_tensors


def test_minilm_folder(tmp_path, minilm_path):
    store = ModelStore(f"memory://hf-{tmp_path.name}")
    report = store.import_path(minilm_path, "all-minilm")
    _, m = store.resolve("all-minilm")
    ref = load_file(str(minilm_path / "model.safetensors"))
    got = {t.name: t for t in read_tensors(store.blobs, m)}
    assert got.keys() == ref.keys()
    for name, arr in ref.items():
        assert got[name].data.dtype == arr.dtype and np.array_equal(got[name].data, arr)
    assert m.format == "safetensors" and m.family == "bert"
    assert m.config == json.loads((minilm_path / "config.json").read_text())
    for rel in ("tokenizer.json", "1_Pooling/config.json", "modules.json", "vocab.txt"):
        digest, _ = m.files[rel]
        assert store.blobs.get(digest) == (minilm_path / rel).read_bytes()
    assert m.tokenizer_config["cls_token"] == "[CLS]"
    assert m.details["parameter_size"] == "22.7M"
    assert report.bytes_written >= sum(a.nbytes for a in ref.values())


def test_sharded_bf16_folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    rng = np.random.default_rng(1)
    a = rng.standard_normal((8, 4)).astype(np.float32)
    bits = rng.integers(0, 2**16, (3, 5), dtype=np.uint16)
    save_file({"a": a}, str(folder / "model-00001-of-00002.safetensors"))
    # safetensors.numpy has no bfloat16: write the header by hand.
    header = json.dumps({"b": {"dtype": "BF16", "shape": [3, 5], "data_offsets": [0, 30]}})
    raw = header.encode()
    (folder / "model-00002-of-00002.safetensors").write_bytes(
        len(raw).to_bytes(8, "little") + raw + bits.tobytes()
    )
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    store = ModelStore(str(tmp_path / "store"))
    store.import_path(folder, "tiny")
    _, m = store.resolve("tiny")
    got = {t.name: t for t in read_tensors(store.blobs, m)}
    assert np.array_equal(got["a"].data, a)
    assert got["b"].dtype == "bfloat16" and np.array_equal(got["b"].data, bits)
    assert m.details["quantization_level"] == "F32"


def test_truncated_safetensors(tmp_path, minilm_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    for f in minilm_path.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            (folder / f.name).write_bytes(f.read_bytes())
    data = (minilm_path / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    store = ModelStore(str(tmp_path / "store"))
    with pytest.raises(ImportFailed, match="model.safetensors.*truncated"):
        store.import_path(folder, "broken")
    assert store.list() == []
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ImportFailed, match="model.safetensors"):
        store.import_path(folder, "broken")
    assert store.list() == []

import json

import pytest

from omax.errors import InvalidRequest
from omax.sharding.manifest import Manifest, TensorEntry, format_parameter_count

D1, D2, D3 = ("sha256:" + c * 64 for c in "123")


def make() -> Manifest:
    t = TensorEntry(
        name="w",
        shape=(4, 64),
        dtype="quantized",
        stored_shape=(4, 40),
        stored_dtype="uint8",
        chunk_shape=(2, 40),
        chunks={"c/0/0": (D1, 80), "c/1/0": (D2, 80)},
        nbytes=160,
        ggml_type="Q4_1",
    )
    return Manifest(
        format="gguf",
        family="llama",
        config={"model_type": "llama", "hidden_size": 64},
        tensors=(t,),
        files={"tokenizer.json": (D3, 10)},
        template="{{ messages }}",
        parameters={"stop": ["</s>"]},
        details={"parameter_size": "135M", "quantization_level": "Q4_1"},
    )


def test_json_roundtrip_and_canonical():
    m = make()
    data = m.to_json()
    assert data == json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode()
    back = Manifest.from_json(data)
    assert back == m and back.to_json() == data
    assert back.tensors[0].chunk_grid == (2, 1)
    assert m.tokenizer == D3
    assert m.blob_digests() == {D1, D2, D3}
    assert m.total_size == 170 + len(data)


def test_with_changes_shares_blobs():
    m = make()
    m2 = m.with_changes(system="be brief", parameters={"temperature": 0.1})
    assert m2.system == "be brief" and m2.parameters == {"temperature": 0.1}
    assert m2.tensors is m.tensors and m2.blob_digests() == m.blob_digests()
    assert m2.to_json() != m.to_json()
    assert m.with_changes(system=None) == m
    with pytest.raises(InvalidRequest):
        m.with_changes(config={})


def test_rejects_bad_manifests():
    with pytest.raises(InvalidRequest):
        Manifest.from_json(b"not json")
    with pytest.raises(InvalidRequest):
        Manifest.from_json(b'{"schema": "other"}')
    with pytest.raises(InvalidRequest):
        Manifest(format="onnx", family="x", config={}, tensors=())


@pytest.mark.parametrize(
    "n,text", [(134_515_008, "135M"), (22_713_728, "22.7M"), (1_235_814_400, "1.2B"), (999, "999")]
)
def test_parameter_size(n, text):
    assert format_parameter_count(n) == text

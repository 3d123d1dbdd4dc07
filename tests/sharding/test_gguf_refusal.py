"""A GGUF omax cannot run is refused at import, create and over HTTP, with a message
that names what is missing and lists what is supported, and the catalog untouched."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator

import gguf
import numpy as np
import pytest
from starlette.testclient import TestClient

from omax.errors import ImportFailed
from omax.serve import catalog_view
from omax.serve.app import build_app
from omax.serve.runtime import CreateRequest, Progress
from omax.sharding import support
from omax.sharding.modelstore import ModelStore
from tests.fake_runtime import FakeRuntime
from tests.sharding.synthetic_gguf import write_gguf

QT = gguf.GGMLQuantizationType


@pytest.fixture
def store(tmp_path):
    store = ModelStore(str(tmp_path / "store"))
    store.catalog.set("keep", "sha256:" + "0" * 64, 1)
    return store


def _refused(store, path, *match: str) -> str:
    """Import ``path`` directly and as an uploaded blob; both refuse with every
    ``match`` in the message and leave the catalog as it was."""
    before = store.catalog.read()
    with pytest.raises(ImportFailed) as direct:
        store.import_path(path, "refused")
    digest, _ = store.blobs.put_file(path)
    with pytest.raises(ImportFailed) as created:
        store.create("refused", files={path.name: digest})
    assert store.catalog.read() == before
    assert [e.name for e in store.list()] == ["keep:latest"]
    for err in (direct.value, created.value):
        for part in match:
            assert part in str(err), str(err)
    return str(direct.value)


def test_unknown_architecture_is_refused(tmp_path, store):
    path = write_gguf(tmp_path / "alien.gguf", "notanarch", keys={"block_count": 2})
    message = _refused(store, path, "alien.gguf", "'notanarch'", "supported architectures:")
    listed = message.split("supported architectures:")[1]
    for arch in ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"):
        assert arch in listed


def test_architecture_transformers_cannot_build_is_refused(tmp_path, store):
    """``deci`` has a GGUF config mapping in transformers but no config class."""
    classes = support.transformers_classes()
    if support.build_problem("deci", classes) is None:
        pytest.skip("this transformers can build deci")
    path = write_gguf(tmp_path / "deci.gguf", "deci", keys={"block_count": 2})
    _refused(store, path, "'deci' cannot run", "no configuration class", "gemma3")


def test_unsupported_tensor_type_is_refused(tmp_path, store):
    block, block_bytes = gguf.GGML_QUANT_SIZES[QT.IQ2_XS]
    path = write_gguf(
        tmp_path / "iq.gguf",
        "llama",
        tensors=[
            ("token_embd.weight", np.ones((4, 32), np.float32), None),
            ("blk.0.ffn_up.weight", np.zeros((2, block_bytes), np.uint8), QT.IQ2_XS),
            ("blk.1.ffn_up.weight", np.zeros((2, block_bytes), np.uint8), QT.IQ2_XS),
        ],
    )
    message = _refused(store, path, "IQ2_XS (2 tensors, e.g. blk.0.ffn_up.weight)")
    assert "supported tensor types: " + ", ".join(support.SUPPORTED_TENSOR_TYPES) in message


def test_unknown_tensor_type_id_is_refused(tmp_path, store):
    path = write_gguf(tmp_path / "odd.gguf", "llama")
    data = bytearray(path.read_bytes())
    # the one tensor's table entry: name, 2 dims, then its type id (F32 = 0)
    entry = data.index(b"token_embd.weight") + len("token_embd.weight") + 4 + 16
    assert struct.unpack_from("<I", data, entry) == (0,)
    struct.pack_into("<I", data, entry, 99)
    path.write_bytes(bytes(data))
    _refused(store, path, "unknown type id 99", "supported tensor types:")


def test_supported_gguf_still_imports(tmp_path, store):
    path = write_gguf(tmp_path / "ok.gguf", "llama")
    store.import_path(path, "ok")
    assert "ok:latest" in [e.name for e in store.list()]


# The policy, from plain data.


def test_unsupported_tensor_types_policy():
    pairs = [("a", "Q4_K"), ("b", "IQ1_S"), ("c", "F32"), ("d", "IQ1_S"), ("e", "TQ2_0")]
    found = support.unsupported_tensor_types(pairs)
    assert found == {"IQ1_S": ["b", "d"], "TQ2_0": ["e"]}
    text = support.describe_unsupported_types(found)
    assert text.startswith("unsupported tensor types IQ1_S (2 tensors, e.g. b), TQ2_0 (1 tensor,")
    assert (
        support.unsupported_tensor_types([("a", t) for t in support.SUPPORTED_TENSOR_TYPES]) == {}
    )


def test_build_problem_policy():
    classes = support.ModelClasses(
        configs=frozenset({"llama", "t5", "orphan"}),
        causal_lm=frozenset({"llama"}),
        base=frozenset({"llama", "t5"}),
    )
    assert support.build_problem("llama", classes) is None
    assert support.build_problem("t5", classes) is None  # a base model class is enough
    assert "no configuration class" in (support.build_problem("alien", classes) or "")
    assert "no causal-LM or base model class" in (support.build_problem("orphan", classes) or "")


# Over HTTP: the app's one error mapping turns ImportFailed into a 400.


class _StoreRuntime(FakeRuntime):
    """The fake runtime, but ``/api/create`` runs against a real store."""

    def __init__(self, store: ModelStore) -> None:
        super().__init__()
        self.store = store

    async def create(self, request: CreateRequest) -> AsyncIterator[Progress]:
        async for p in catalog_view.create(self.store, request):
            yield p


@pytest.mark.parametrize("stream", [False, True])
def test_create_refusal_is_http_400(tmp_path, store, stream):
    """Streaming or not (the CLI streams), a refused model is a 400 before any line."""
    assert ImportFailed.status == 400
    path = write_gguf(tmp_path / "alien.gguf", "notanarch", keys={"block_count": 2})
    digest, _ = store.blobs.put_file(path)
    before = store.catalog.read()
    with TestClient(build_app(_StoreRuntime(store))) as http:
        r = http.post(
            "/api/create",
            json={"model": "alien", "files": {"alien.gguf": digest}, "stream": stream},
        )
    assert r.status_code == 400, r.text
    assert "'notanarch'" in r.json()["error"] and "supported architectures:" in r.json()["error"]
    assert store.catalog.read() == before

import hashlib
import json
import time

import pytest

from omax.errors import ImportFailed
from omax.sharding.importers.common import BlobWriter
from omax.sharding.importers.ollama import import_ollama


def _blob(root, data: bytes) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (root / "blobs" / digest.replace(":", "-")).write_bytes(data)
    return digest


def test_import_from_ollama_folder(tmp_path, smol_store, smollm2_path):
    store, base = smol_store
    root = tmp_path / "ollama"
    (root / "blobs").mkdir(parents=True)
    h = hashlib.sha256(smollm2_path.read_bytes()).hexdigest()
    # A symlink keeps the file identity, so the GGUF metadata parse is reused.
    (root / "blobs" / f"sha256-{h}").symlink_to(smollm2_path)
    layers = [{"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{h}"}]
    for kind, data in [
        ("template", b"{{ .Prompt }}"),
        ("system", b"You are Smol."),
        ("params", json.dumps({"stop": ["<|im_end|>"], "temperature": 0.2}).encode()),
        ("license", b"apache-2.0 text"),
    ]:
        layers.append(
            {"mediaType": f"application/vnd.ollama.image.{kind}", "digest": _blob(root, data)}
        )
    mdir = root / "manifests" / "registry.ollama.ai" / "library" / "smollm2"
    mdir.mkdir(parents=True)
    (mdir / "135m").write_text(json.dumps({"schemaVersion": 2, "layers": layers}))
    writer = BlobWriter(store.blobs)
    m = import_ollama(writer, "ollama://smollm2:135m", root)
    report = store.import_manifest("ollama-smol", m, writer, time.monotonic())
    assert report.bytes_written < 200_000
    _, got = store.resolve("ollama-smol")
    assert got.system == "You are Smol." and got.license == "apache-2.0 text"
    assert got.parameters == {"stop": ["<|im_end|>"], "temperature": 0.2}
    assert "<|im_start|>" in got.template
    assert got.tensors == store.resolve("smollm2:135m")[1].tensors
    with pytest.raises(ImportFailed, match="no such Ollama model"):
        import_ollama(writer, "missing:latest", root)

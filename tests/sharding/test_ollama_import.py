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


def _ollama_folder(root, smollm2_path, model: str = "smollm2") -> None:
    """An Ollama models folder holding ``<model>:135m`` with every text layer."""
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
    mdir = root / "manifests" / "registry.ollama.ai" / "library" / model
    mdir.mkdir(parents=True)
    (mdir / "135m").write_text(json.dumps({"schemaVersion": 2, "layers": layers}))


def test_import_from_ollama_folder(tmp_path, smol_store, smollm2_path):
    store, base = smol_store
    root = tmp_path / "ollama"
    _ollama_folder(root, smollm2_path)
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


def test_modelstore_pull_from_ollama_models_env(tmp_path, monkeypatch, smol_store, smollm2_path):
    store, _ = smol_store
    root = tmp_path / "ollama-models"
    _ollama_folder(root, smollm2_path, model="smolpull")
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    stages: list[str] = []
    report = store.pull("ollama://smolpull:135m", progress=lambda s, done, total: stages.append(s))
    assert report.name == "smolpull:135m" and report.source == "ollama://smolpull:135m"
    assert report.bytes_written < 200_000 and report.bytes_deduplicated > 90e6
    assert stages[-1] == "success" and "importing tensors" in stages
    digest, got = store.resolve("smolpull:135m")
    assert got.tensors == store.resolve("smollm2:135m")[1].tensors
    assert digest == report.digest
    assert got.system == "You are Smol." and got.parameters["temperature"] == 0.2
    files = dict(got.files)
    assert store.blobs.get(files["ollama/template"][0]) == b"{{ .Prompt }}"
    before = store.catalog.list()
    with pytest.raises(ImportFailed, match="no such Ollama model"):
        store.pull("ollama://llama3.2:1b")
    assert store.catalog.list() == before
    store.delete("smolpull:135m")

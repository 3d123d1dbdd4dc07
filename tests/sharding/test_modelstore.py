import pytest

from omax.errors import BlobNotFound, InvalidRequest, ModelNotFound
from omax.sharding.modelstore import ModelStore


def test_copy_and_create_add_almost_nothing(smol_store):
    store, base = smol_store
    assert base.bytes_written > 90e6 and base.bytes_deduplicated == 0
    garbage = store.gc(grace_s=0)  # what other tests sharing the store left
    store.copy("smollm2:135m", "smol-copy")
    assert store.resolve("smol-copy")[0] == base.digest
    report = store.create("smol-pirate", from_="smollm2:135m", system="You are a pirate.")
    assert report.bytes_written < 200_000  # only the new manifest
    assert report.digest != base.digest
    _, m = store.resolve("smol-pirate")
    assert m.system == "You are a pirate."
    assert m.blob_digests() == store.resolve("smollm2:135m")[1].blob_digests()
    text = store.modelfile("smol-pirate")
    assert 'SYSTEM """You are a pirate."""' in text
    store.delete("smol-copy")
    with pytest.raises(ModelNotFound):
        store.resolve("smol-copy")
    assert store.gc(grace_s=0) == garbage  # every blob it wrote still referenced


def test_create_from_files_reuses_blobs(smol_store, smollm2_path):
    store, base = smol_store
    digest, created = store.blobs.put_file(smollm2_path)
    report = store.create(
        "from-files",
        files={"model.gguf": digest},
        parameters={"temperature": "0.3", "stop": ["<|im_end|>"]},
    )
    assert report.digest == store.create("again", from_="from-files").digest
    _, m = store.resolve("from-files")
    assert m.parameters == {"temperature": 0.3, "stop": ["<|im_end|>"]}
    assert report.bytes_written < 200_000 and report.bytes_deduplicated > 90e6
    with pytest.raises(BlobNotFound):
        store.create("x", files={"m.gguf": "sha256:" + "9" * 64})
    with pytest.raises(InvalidRequest):
        store.create("x")
    store.delete("from-files")
    store.delete("again")
    victims, nbytes = store.gc(dry_run=False, grace_s=0)
    if created:
        assert digest in victims and nbytes >= smollm2_path.stat().st_size
    assert store.verify() == []


def test_modelfile_create_and_memory_store(tmp_path, minilm_path):
    store = ModelStore(f"memory://ms-{tmp_path.name}")
    text = f'FROM {minilm_path}\nSYSTEM """embed"""\n'
    report = store.create_from_modelfile("mini", text)
    assert store.resolve("mini")[1].system == "embed"
    again = store.create_from_modelfile("mini2", text)
    assert again.digest == report.digest and again.bytes_written == 0
    assert [e.name for e in store.list()] == ["mini2:latest", "mini:latest"]
    with pytest.raises(InvalidRequest):
        store.copy("mini", "bad name")

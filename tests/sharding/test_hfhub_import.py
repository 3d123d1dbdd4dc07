"""``hf.co/...`` pulls, offline against a Hugging Face cache the test lays out the way
huggingface_hub does (``models--<user>--<repo>/refs/main`` + ``snapshots/<commit>/``)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from omax.errors import ImportFailed
from omax.sharding.importers import hfhub
from omax.sharding.importers.hfhub import HubRef, RepoFile, parse_ref, pick_gguf, quant_label
from omax.sharding.zarrstore import read_tensors

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache_repo(cache, repo_id: str, files: dict[str, object]) -> None:
    """``files``: repo path -> source Path (symlinked, as the cache links to blobs) or bytes."""
    root = cache / ("models--" + repo_id.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    snap = root / "snapshots" / COMMIT
    for rel, src in files.items():
        dest = snap / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, bytes):
            dest.write_bytes(src)
        else:
            dest.symlink_to(src)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch, smollm2_path, minilm_path):
    cache = tmp_path / "hf-cache"
    _cache_repo(
        cache,
        "test/smollm2-gguf",
        {
            smollm2_path.name: smollm2_path,
            "SmolLM2-135M-Instruct.Q8_0.gguf": b"never read: only Q4_1 is pulled",
            "mmproj-SmolLM2-F16.gguf": b"a projector, never picked",
            "README.md": b"# test",
        },
    )
    minilm = {
        p.relative_to(minilm_path).as_posix(): p for p in minilm_path.rglob("*") if p.is_file()
    }
    _cache_repo(cache, "test/minilm", minilm)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def test_pull_gguf_by_quant(hf_cache, smol_store):
    store, base = smol_store
    before = {e.name for e in store.list()}
    report = store.pull("hf.co/test/smollm2-gguf:q4_1")
    assert report.name == "hf.co/test/smollm2-gguf:q4_1"
    assert report.bytes_written < 200_000  # same tensors as the bundled import
    _, m = store.resolve("hf.co/test/smollm2-gguf:Q4_1")
    assert m.tensors == store.resolve("smollm2:135m")[1].tensors
    assert m.details["quantization_level"] == "Q4_1"
    # No tag: Q4_1 is the first of the default preferences the repo has.
    assert store.pull("huggingface.co/test/smollm2-gguf").digest == report.digest
    assert {e.name for e in store.list()} - before == {
        "hf.co/test/smollm2-gguf:q4_1",
        "huggingface.co/test/smollm2-gguf:latest",
    }
    store.delete("hf.co/test/smollm2-gguf:q4_1")
    store.delete("huggingface.co/test/smollm2-gguf:latest")


def test_missing_quant_lists_available(hf_cache, smol_store):
    store, _ = smol_store
    generation = store.catalog.list()
    with pytest.raises(ImportFailed, match=r"no Q4_K_M file in the repo; available: Q4_1, Q8_0"):
        store.pull("hf.co/test/smollm2-gguf:Q4_K_M")
    with pytest.raises(ImportFailed, match="not in the Hugging Face cache"):
        store.pull("hf.co/test/absent:Q4_0")
    with pytest.raises(ImportFailed, match="no GGUF files, so no Q4_0 tag"):
        store.pull("hf.co/test/minilm:Q4_0")
    assert store.catalog.list() == generation


def test_pull_safetensors_folder(hf_cache, tmp_path, minilm_path):
    from safetensors.numpy import load_file

    from omax.sharding.modelstore import ModelStore

    store = ModelStore(str(tmp_path / "store"))
    store.pull("hf.co/test/minilm")
    _, m = store.resolve("hf.co/test/minilm:latest")
    ref = load_file(str(minilm_path / "model.safetensors"))
    got = {t.name: t.data for t in read_tensors(store.blobs, m)}
    assert got.keys() == ref.keys()
    assert all(np.array_equal(got[k], v) for k, v in ref.items())
    assert m.family == "bert"
    digest, _ = m.files["1_Pooling/config.json"]
    assert store.blobs.get(digest) == (minilm_path / "1_Pooling/config.json").read_bytes()


def test_unreachable_hub_falls_back_to_cache(hf_cache, monkeypatch):
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise httpx.ConnectError("no route to host")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", refuse)
    files = hfhub.list_files(HubRef("test/minilm", None), "hf.co/test/minilm")
    assert "1_Pooling/config.json" in {f.path for f in files}
    with pytest.raises(ImportFailed, match=r"cannot reach the Hugging Face hub .*not in the"):
        hfhub.list_files(HubRef("test/absent", None), "hf.co/test/absent")


def test_parse_ref_and_labels():
    assert parse_ref("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M") == HubRef(
        "bartowski/Llama-3.2-1B-Instruct-GGUF", "Q4_K_M"
    )
    assert parse_ref("huggingface.co/u/r:latest") == HubRef("u/r", None)
    for bad in ("hf.co/justrepo", "hf.co/a/b/c", "hf.co//r"):
        with pytest.raises(ImportFailed):
            parse_ref(bad)
    assert quant_label("Llama-3.2-1B-Instruct-Q4_K_M.gguf") == "Q4_K_M"
    assert quant_label("smollm2-135m-instruct.q4_1.gguf") == "Q4_1"
    assert quant_label("x-IQ4_XS.gguf") == "IQ4_XS"
    assert quant_label("Qwen-F16-GGUF/qwen.Q8_0.gguf") == "Q8_0"
    assert quant_label("model.gguf") is None


def test_pick_gguf_policy():
    names = ["m-Q4_K_S.gguf", "m-Q4_K_M.gguf", "m-Q8_0.gguf", "m-IQ4_XS.gguf", "mmproj-m-f16.gguf"]
    files = [RepoFile(n, 100) for n in names]
    assert pick_gguf(files, "q4_k_s").path == "m-Q4_K_S.gguf"
    assert pick_gguf(files, None).path == "m-Q4_K_M.gguf"
    with pytest.raises(ImportFailed, match="available: IQ4_XS, Q4_K_M, Q4_K_S, Q8_0"):
        pick_gguf(files, "Q4_K")
    unusual = [RepoFile("big-Q2_K.gguf", 300), RepoFile("small-Q3_K_L.gguf", 200)]
    assert pick_gguf(unusual, None).path == "small-Q3_K_L.gguf"  # smallest
    split = [
        RepoFile("m-Q4_K_M-00001-of-00002.gguf", 1),
        RepoFile("m-Q4_K_M-00002-of-00002.gguf", 1),
    ]
    with pytest.raises(ImportFailed, match="split into parts"):
        pick_gguf(split, "Q4_K_M")
    with pytest.raises(ImportFailed, match="no .gguf files"):
        pick_gguf([RepoFile("mmproj-x-f16.gguf", 1)], None)

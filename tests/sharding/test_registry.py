"""Registry pull and push against a real registry server on 127.0.0.1 serving the
bundled SmolLM2 GGUF in Ollama's registry layout (tests/registry_server.py)."""

from __future__ import annotations

import json
import os
import time

import pytest

from omax.errors import DigestMismatch, ImportFailed, InvalidRequest
from omax.sharding.importers.registry import (
    MANIFEST_FILE,
    digest_of,
    layers_of,
    parse_ref,
    staging_dir,
)
from omax.sharding.importers.registry_http import short
from omax.sharding.modelstore import ModelStore
from tests.registry_server import Registry

TEXTS = {
    "template": "{{ .Prompt }}",
    "system": "You are Smol.",
    "params": json.dumps({"stop": ["<|im_end|>"], "temperature": 0.2}),
    "license": "apache-2.0 text",
}


@pytest.fixture(scope="module")
def registry(tmp_path_factory, smollm2_path):
    reg = Registry(tmp_path_factory.mktemp("registry"))
    for tag in ("q4_1", "cut", "cut2", "bad", "gone"):
        reg.publish_gguf("library/smol", tag, smollm2_path, **TEXTS)
    yield reg
    reg.close()


def gguf_digest(registry: Registry, tag: str) -> str:
    doc = json.loads(registry.manifest("library/smol", tag))
    return doc["layers"][0]["digest"]


def test_names_as_ollama_reads_them():
    r = parse_ref("llama3.2")
    assert (r.host, r.namespace, r.model, r.tag) == (
        "registry.ollama.ai",
        "library",
        "llama3.2",
        "latest",
    )
    assert r.url(False, "manifests", r.tag) == (
        "https://registry.ollama.ai/v2/library/llama3.2/manifests/latest"
    )
    assert parse_ref("library/llama3.2:1b").name == "llama3.2:1b"
    r = parse_ref("127.0.0.1:5000/me/smol:q4")
    assert r.name == "127.0.0.1:5000/me/smol:q4"
    assert r.url(True, "blobs", "x") == "http://127.0.0.1:5000/v2/me/smol/blobs/x"
    assert parse_ref("http://example.com/me/smol").scheme == "http"


def test_manifests_omax_cannot_run_are_refused_before_any_download():
    def doc(*kinds: str) -> bytes:
        layers = [
            {
                "mediaType": f"application/vnd.ollama.image.{k}",
                "digest": digest_of(k.encode()),
                "size": 1,
            }
            for k in kinds
        ]
        return json.dumps({"schemaVersion": 2, "layers": layers}).encode()

    assert len(layers_of(doc("model", "template"))) == 2
    with pytest.raises(ImportFailed, match="safetensors pulls are not supported"):
        layers_of(doc("tensor", "tensor"))
    with pytest.raises(ImportFailed, match="projector layers"):
        layers_of(doc("model", "projector"))
    with pytest.raises(ImportFailed, match="more than one model layer"):
        layers_of(doc("model", "model"))
    with pytest.raises(ImportFailed, match="not a registry manifest"):
        layers_of(b'{"layers": [{"digest": "sha256:zz"}]}')


def test_pull_streams_ollama_progress_and_imports(registry, smol_store):
    store, base = smol_store
    ref = f"{registry.host}/library/smol:q4_1"
    lines: list[tuple] = []
    report = store.pull(
        ref,
        progress=lambda s, done, total: lines.append((s,)),
        insecure=True,
        on_layer=lambda s, digest, total, done: lines.append((s, digest, total, done)),
    )
    statuses = [line[0] for line in lines]
    gguf = gguf_digest(registry, "q4_1")
    assert statuses[0] == "pulling manifest"
    assert (f"pulling {short(gguf)}", gguf, 98362432, 98362432) in lines
    order = [s for s in dict.fromkeys(statuses) if not s.startswith(("pulling ", "importing"))]
    assert order == ["verifying sha256 digest", "writing manifest", "success"]
    assert report.name == ref and report.bytes_written < 3_000_000  # tensors deduplicated
    digest, m = store.resolve(ref)
    assert m.tensors == store.resolve("smollm2:135m")[1].tensors
    assert m.system == "You are Smol." and m.parameters["temperature"] == 0.2
    assert store.blobs.get(m.files[MANIFEST_FILE][0]) == registry.manifest("library/smol", "q4_1")
    assert not list((staging_dir(store.blobs) / "blobs").iterdir())  # staging emptied

    before = len(registry.requests)
    again = store.pull(ref, insecure=True)  # up to date: only the manifest is fetched
    assert again.digest == digest and again.bytes_written == 0
    assert [r[0] for r in registry.requests[before:]] == ["GET"]


def test_pull_refusals_leave_the_catalog_alone(registry, smol_store):
    store, _ = smol_store
    before = store.catalog.list()
    with pytest.raises(ImportFailed, match="pull model manifest: file does not exist"):
        store.pull(f"{registry.host}/library/absent:1", insecure=True)
    with pytest.raises(ImportFailed, match="insecure protocol http"):
        store.pull(f"http://{registry.host}/library/smol:q4_1")
    with pytest.raises(ImportFailed, match="pull model manifest"):  # TLS to a plain server
        store.pull(f"{registry.host}/library/smol:q4_1")
    assert store.catalog.list() == before


def test_pull_resumes_a_cut_download(registry, smol_store):
    store, _ = smol_store
    gguf = gguf_digest(registry, "cut")
    registry.cut(gguf, 10 << 20)  # the first GET stops after 10 MiB: retried with a Range
    before = len(registry.requests)
    store.pull(f"{registry.host}/library/smol:cut", insecure=True)
    ranges = [r[2] for r in registry.requests[before:] if gguf in r[1]]
    assert ranges[0] is None and ranges[1] is not None
    assert int(ranges[1].removeprefix("bytes=").rstrip("-")) >= 10 << 20

    # cut on every try of one pull: it fails, the next pull resumes from the partial
    ref = f"{registry.host}/library/smol:cut2"
    registry.cut(gguf, 5 << 20, 5 << 20, 5 << 20, 5 << 20)
    with pytest.raises(ImportFailed, match="download interrupted .* pull again to resume"):
        store.pull(ref, insecure=True)
    partial = staging_dir(store.blobs) / "blobs" / (gguf.replace(":", "-") + "-partial")
    kept = partial.stat().st_size
    assert kept >= 15 << 20
    before = len(registry.requests)
    report = store.pull(ref, insecure=True)
    gets = [r for r in registry.requests[before:] if gguf in r[1]]
    assert gets[0][2] == f"bytes={kept}-" and len(gets) == 2  # one more cut, then the rest
    assert store.resolve(ref)[0] == report.digest


def test_gc_removes_what_an_abandoned_pull_left(registry, smol_store):
    store, _ = smol_store
    gguf = gguf_digest(registry, "gone")
    registry.cut(gguf, 5 << 20, 5 << 20, 5 << 20, 5 << 20)
    with pytest.raises(ImportFailed, match="pull again to resume"):
        store.pull(f"{registry.host}/library/smol:gone", insecure=True)
    partial = staging_dir(store.blobs) / "blobs" / (gguf.replace(":", "-") + "-partial")
    size = partial.stat().st_size
    assert str(partial) not in store.gc(dry_run=False, grace_s=0)[0]  # a pull may resume it
    assert partial.exists()
    hour_ago = time.time() - 3600
    os.utime(partial, (hour_ago, hour_ago))
    listed, nbytes = store.gc(dry_run=True, grace_s=0)
    assert str(partial) in listed and nbytes >= size and partial.exists()
    assert str(partial) in store.gc(dry_run=False, grace_s=0)[0]
    assert not partial.exists()


def test_digest_mismatch_is_refused(registry, smol_store):
    store, _ = smol_store
    doc = json.loads(registry.manifest("library/smol", "bad"))
    system = next(
        layer["digest"] for layer in doc["layers"] if layer["mediaType"].endswith("system")
    )
    registry.corrupt(system)
    before = store.catalog.list()
    with pytest.raises(DigestMismatch, match=f"pulling {short(system)}: digest mismatch"):
        store.pull(f"{registry.host}/library/smol:bad", insecure=True)
    assert store.catalog.list() == before
    assert not (staging_dir(store.blobs) / "blobs" / system.replace(":", "-")).exists()
    registry.corrupted.clear()


def test_push_then_pull_into_a_second_store_digest_for_digest(registry, smol_store, tmp_path):
    store, _ = smol_store
    source = f"{registry.host}/library/smol:q4_1"
    store.pull(source, insecure=True)
    with pytest.raises(InvalidRequest, match="not pulled from a registry"):
        store.push("smollm2:135m", f"{registry.host}/library/x:1", insecure=True)
    store.create("smol-changed", from_=source, system="You are someone else.")
    with pytest.raises(InvalidRequest, match="system changed since it was pulled"):
        store.push("smol-changed", f"{registry.host}/library/x:1", insecure=True)
    store.delete("smol-changed")

    other = Registry(tmp_path / "registry2")
    try:
        target = f"{other.host}/team/smolcopy:v1"
        lines: list[tuple] = []
        store.push(
            source,
            target,
            insecure=True,
            progress=lambda s: lines.append((s,)),
            on_layer=lambda s, digest, total, done: lines.append((s, digest, total, done)),
        )
        pushed = other.manifest("team/smolcopy", "v1")
        assert pushed == registry.manifest("library/smol", "q4_1")
        gguf = gguf_digest(registry, "q4_1")
        assert (f"pushing {short(gguf)}", gguf, 98362432, 98362432) in lines
        assert lines[-1] == ("pushing manifest",)
        assert {r[0] for r in other.requests} >= {"HEAD", "POST", "PATCH", "PUT"}

        before = len(other.requests)  # a second push: every blob is there, nothing uploaded
        store.push(source, target, insecure=True)
        assert {r[0] for r in other.requests[before:]} == {"HEAD", "PUT"}

        second = ModelStore(str(tmp_path / "second"))
        report = second.pull(target, insecure=True)
        assert report.digest == store.resolve(source)[0]  # the same omax model, digest for digest
        m = second.resolve(target)[1]
        assert digest_of(second.blobs.get(m.files[MANIFEST_FILE][0])) == digest_of(pushed)
    finally:
        other.close()


def test_push_to_a_store_url_copies_the_model(smol_store, tmp_path):
    store, base = smol_store
    with pytest.raises(InvalidRequest, match="cannot push to the server"):
        store.push("smollm2:135m", "http://127.0.0.1:11434")
    store.push("smollm2:135m", str(tmp_path / "third"))
    third = ModelStore(str(tmp_path / "third"))
    assert third.resolve("smollm2:135m")[0] == base.digest
    assert third.verify() == []

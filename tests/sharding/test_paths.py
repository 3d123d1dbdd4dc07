"""Paths from a request or from inside an uploaded file cannot leave where they belong.

A real store in a temporary folder; the HTTP API passes ``omax.store.import-roots``
as ``import_roots`` (empty by default), a notebook's own store passes nothing.
"""

from __future__ import annotations

import json
import shutil

import pytest

from omax.errors import InvalidRequest, OmaxError
from omax.sharding.modelstore import ModelStore
from omax.sharding.paths import check_relative_name


@pytest.fixture
def store(tmp_path):
    return ModelStore(str(tmp_path / "store"))


def test_server_paths_are_refused_when_no_import_root_is_set(store, smollm2_path):
    for source in (str(smollm2_path), "/etc/passwd", "./x.gguf", "~/model.gguf"):
        with pytest.raises(InvalidRequest, match="server path"):
            store.create("m", from_=source, import_roots=())


def test_a_path_under_an_import_root_is_imported(store, smollm2_path, tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    shutil.copy(smollm2_path, root / "smol.gguf")
    report = store.create("m", from_=str(root / "smol.gguf"), import_roots=[str(root)])
    assert report.digest == store.resolve("m")[0]


def test_paths_that_escape_an_import_root_are_refused(store, smollm2_path, tmp_path):
    root = tmp_path / "models"
    (root / "sub").mkdir(parents=True)
    (root / "link.gguf").symlink_to(smollm2_path)  # a symlink out of the root
    escapes = [
        str(root / "sub" / ".." / ".." / smollm2_path.name),
        str(root / "link.gguf"),
        str(smollm2_path),
        "/etc/passwd",
    ]
    for source in escapes:
        with pytest.raises(InvalidRequest, match="not under an import root"):
            store.create("m", from_=source, import_roots=[str(root)])


def test_a_missing_file_under_a_root_says_so(store, tmp_path):
    with pytest.raises(OmaxError, match="no such file"):
        store.create("m", from_=str(tmp_path / "nope.gguf"), import_roots=[str(tmp_path)])


@pytest.mark.parametrize(
    "name", ["../x.gguf", "/abs/x.gguf", "a/../../x.gguf", "", "a//b", "./a", "a\\..\\b", "a\0b"]
)
def test_uploaded_file_names_must_stay_inside_the_model(name):
    with pytest.raises(InvalidRequest, match="invalid file name"):
        check_relative_name(name)


def test_create_from_files_refuses_an_escaping_name(store, smollm2_path):
    digest = store.blobs.put_file(str(smollm2_path))[0]
    with pytest.raises(InvalidRequest, match="invalid file name"):
        store.create("m", files={"../../evil.gguf": digest})
    assert store.create("m", files={"smol.gguf": digest}).digest


def test_a_safetensors_index_cannot_name_shards_outside_the_upload(store, minilm_path, tmp_path):
    outside = tmp_path / "secret.safetensors"
    shutil.copy(minilm_path / "model.safetensors", outside)
    files = {}
    for path in minilm_path.rglob("*"):
        if path.is_file() and path.name != "model.safetensors":
            files[str(path.relative_to(minilm_path))] = store.blobs.put_file(str(path))[0]
    index = tmp_path / "model.safetensors.index.json"
    for shard in (f"../../../../{outside}", str(outside), "../secret.safetensors"):
        index.write_text(json.dumps({"weight_map": {"embeddings.word_embeddings.weight": shard}}))
        files["model.safetensors.index.json"] = store.blobs.put_file(str(index))[0]
        with pytest.raises(InvalidRequest, match="outside the model folder"):
            store.create("minilm", files=files)


def test_a_notebook_store_still_reads_any_path(store, smollm2_path):
    assert store.create("m", from_=str(smollm2_path)).digest

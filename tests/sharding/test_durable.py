"""Durable writes, quarantine, crash recovery of a local replica store, and gc leases.

Real files on a real disk; what an fsync must guarantee is checked through the
states a crash can observe (no temporary file left, the old or the new bytes whole,
never a digest name over other bytes)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from omax.errors import StoreError
from omax.plugins.replicas import LocalReplicas
from omax.sharding import leases
from omax.sharding.blobs import BlobStore, digest_bytes
from omax.sharding.durable import is_temporary, write_atomic
from omax.sharding.modelstore import ModelStore
from omax.sharding.zarrstore import read_tensors
from tests.tiny import tiny_llama


def _flip(path: str, offset: int = 10) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def test_write_atomic_replaces_whole_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "marker"
    write_atomic(path, b"old")
    write_atomic(path, b"new contents")
    assert path.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["marker"]
    with pytest.raises(TypeError):
        write_atomic(path, "not bytes")  # type: ignore[arg-type] - fails mid-write
    assert path.read_bytes() == b"new contents"  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["marker"]
    assert is_temporary(".marker.0123abcd.tmp") and not is_temporary("abc.complete")


def test_a_blob_write_that_fails_midway_leaves_no_name_and_no_temporary_file(tmp_path):
    store = BlobStore(str(tmp_path))

    def pieces():
        yield b"a" * 1000
        raise OSError("disk gone")

    with pytest.raises(StoreError):
        store.put_stream(pieces())
    assert list(store.iter_digests()) == []
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []
    digest = store.put_bytes(b"whole")
    assert store.get(digest) == b"whole"
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []


def test_writing_existing_bytes_again_heals_a_damaged_blob(tmp_path):
    store = BlobStore(str(tmp_path))
    data = os.urandom(5000)
    digest = store.put_bytes(data)
    _flip(store.path(digest))
    assert not store.verify(digest)
    # an upload of the same bytes (expected digest) is not skipped for "existing"
    again, created = store.put_stream([data], digest)
    assert again == digest and not created
    assert store.verify(digest)


def test_damaged_and_cut_short_blobs_are_quarantined_not_trusted(tmp_path):
    store = BlobStore(str(tmp_path))
    short = store.put_bytes(os.urandom(4000))
    flipped = store.put_bytes(os.urandom(4000))
    good = store.put_bytes(os.urandom(4000))
    with open(store.path(short), "r+b") as f:
        f.truncate(100)
    _flip(store.path(flipped))
    assert store.intact(good, 4000) and store.check(good)
    assert not store.intact(short, 4000)  # cheap: a stat
    assert not store.check(flipped)  # a re-hash
    assert not store.has(short) and not store.has(flipped)
    moved = store.quarantined()
    assert sorted(Path(p).name.split(".")[0] for p in moved) == sorted([short[7:], flipped[7:]])


def _replica(tmp_path: Path, n: int = 4) -> tuple[LocalReplicas, str, dict[str, int]]:
    """A complete replica of a small manifest fetched from an origin store."""
    from tests.plugins.test_replication_cluster import make_model

    origin = str(tmp_path / "origin")
    digest, manifest, _ = make_model(origin, n, 3000, seed=7)
    replicas = LocalReplicas(str(tmp_path / "worker"))
    replica, _ = asyncio.run(replicas.fetch(digest, origin))
    assert replica.complete and replicas.is_complete(digest)
    return replicas, digest, manifest.blob_sizes()


def test_markers_are_written_atomically_and_a_cut_short_one_counts_for_nothing(tmp_path):
    replicas, digest, _ = _replica(tmp_path)
    names = [p.name for p in replicas.markers.iterdir()]
    assert names == [f"{digest[7:]}.complete"]  # no partial, no temporary file
    marker = replicas.markers / names[0]
    marker.write_text(json.dumps({"total": 1})[:5])  # what a torn write leaves
    assert not replicas.is_complete(digest)
    assert digest not in replicas.scan()
    done = replicas.recover()
    assert done["markers"] == [names[0]] and not marker.exists()


def test_recover_clears_temporary_files_and_demotes_a_replica_missing_bytes(tmp_path):
    replicas, digest, sizes = _replica(tmp_path)
    store = replicas.store
    blob = max(sizes)
    with open(store.path(blob), "r+b") as f:
        f.truncate(10)  # renamed into place before its bytes reached the disk
    torn = tmp_path / "worker" / "blobs" / "tmp" / "deadbeef"
    torn.write_bytes(b"x" * 10)
    (replicas.markers / f".{digest[7:]}.complete.0123.tmp").write_text("{")
    done = replicas.recover()
    assert done["demoted"] == [digest]
    assert not torn.exists() and len(done["tmp"]) == 2
    assert replicas.scan()[digest].complete is False  # partial: the next fetch repairs it
    assert not store.has(blob) and len(store.quarantined()) == 1
    replica, result = asyncio.run(replicas.fetch(digest, str(tmp_path / "origin")))
    assert replica.complete and result.fetched_bytes == sizes[blob]
    assert store.verify_all() == []


def test_verify_quarantines_bad_blobs_and_a_fetch_replaces_them(tmp_path):
    replicas, digest, sizes = _replica(tmp_path)
    blob = min(sizes)
    _flip(replicas.store.path(blob))
    assert replicas.verify(digest) == [blob]
    assert not replicas.is_complete(digest)
    replica, result = asyncio.run(replicas.fetch(digest, str(tmp_path / "origin")))
    assert replica.complete and result.fetched_bytes == sizes[blob]
    assert replicas.store.verify(blob)


def test_a_lease_is_listed_while_held_and_gone_after(tmp_path):
    blobs = BlobStore(str(tmp_path))
    with leases.held(blobs, "import x", ["sha256:" + "a" * 64]) as lease:
        [info] = leases.read_leases(blobs)
        assert info.id == lease.id and info.what == "import x"
        assert info.manifests == ("sha256:" + "a" * 64,)
    assert leases.read_leases(blobs) == []


def test_expired_leases_are_dropped_and_unreadable_fresh_ones_protect_everything(tmp_path):
    store = ModelStore(str(tmp_path))
    orphan = store.blobs.put_bytes(b"orphan")
    old = time.time() - 7200
    os.utime(store.blobs.path(orphan), (old, old))
    folder = tmp_path / leases.LEASES
    folder.mkdir()
    dead = {"id": "dead", "what": "crashed import", "started": old, "renewed": old}
    (folder / "dead.json").write_text(json.dumps(dead))
    (folder / "torn.json").write_text('{"id": "to')
    assert store.gc(dry_run=False, grace_s=0) == ([], 0)  # the torn lease keeps all
    assert not (folder / "dead.json").exists()
    (folder / "torn.json").unlink()
    assert store.gc(dry_run=False, grace_s=0)[0] == [orphan]


def test_gc_during_a_long_import_loses_nothing(tmp_path):
    url = str(tmp_path / "origin")
    store = ModelStore(url, chunk_bytes=1 << 16)
    orphan = store.blobs.put_bytes(b"left by a model deleted long ago")
    old = time.time() - 7200
    os.utime(store.blobs.path(orphan), (old, old))
    folder = tiny_llama(tmp_path / "tiny")
    collected: list[list[str]] = []

    def progress(status: str, done: int, total: int) -> None:
        # well into the import: many chunks written, no catalog entry names them
        if status.startswith("importing") and done > total // 2 and not collected:
            collected.append(ModelStore(url).gc(dry_run=False, grace_s=0)[0])

    report = store.import_path(folder, "tiny", progress=progress)
    assert collected == [[orphan]]  # gc ran, and took only the real orphan
    fresh = ModelStore(url)
    digest, manifest = fresh.resolve("tiny")
    assert digest == report.digest
    assert sum(1 for _ in read_tensors(fresh.blobs, manifest)) == len(manifest.tensors)


def test_a_commit_refuses_a_model_whose_blob_vanished(tmp_path):
    url = str(tmp_path / "origin")
    store = ModelStore(url, chunk_bytes=1 << 16)
    folder = tiny_llama(tmp_path / "tiny")
    gone: list[str] = []

    def progress(status: str, done: int, total: int) -> None:
        if status.startswith("importing") and done and not gone:  # a hand, a rogue gc
            victim = next(iter(store.blobs.iter_digests()))
            store.blobs.delete(victim)
            gone.append(victim)

    with pytest.raises(StoreError, match="vanished"):
        store.import_path(folder, "tiny", progress=progress)
    assert store.list() == []
    assert digest_bytes(b"") not in gone

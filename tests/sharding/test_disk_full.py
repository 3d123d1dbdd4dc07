"""Disk full mid-import. The import fails with the source file, the tensor and ENOSPC
in its message; the catalog and the model already there are untouched, no partial blob
sits under a digest name, and ``gc`` gives the space back.

Run twice: on a real filesystem, a 4 MiB tmpfs mounted for the test (skipped where
mounting is not allowed), and on ``FakeFullFileSystem``, a memory filesystem that fails
writes with ENOSPC past a byte budget, so the invariant is checked without root too."""

from __future__ import annotations

import errno
import os
import subprocess

import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFile, MemoryFileSystem
from safetensors.numpy import save_file

from omax.errors import StoreError
from omax.sharding.modelstore import ModelStore
from omax.sharding.zarrstore import read_tensors


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


class FakeFullFileSystem(MemoryFileSystem):
    """A private memory filesystem that holds ``capacity`` bytes: a write past that
    raises ENOSPC like a full disk, and removing files frees their bytes."""

    def __init__(self, capacity: int) -> None:
        super().__init__(global_store=False, skip_instance_cache=True)
        self.capacity = capacity

    def used(self) -> int:
        return sum(f.getbuffer().nbytes for f in self.store.values())

    def _open(self, path, mode="rb", **kwargs):
        f = super()._open(path, mode, **kwargs)
        if "w" in mode or "x" in mode:
            f.__class__ = _FullFile
        return f

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        if self.used() + len(value) > self.capacity:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        super().pipe_file(path, value, mode, **kwargs)


class _FullFile(MemoryFile):
    def write(self, data) -> int:
        if self.fs.used() + memoryview(data).nbytes > self.fs.capacity:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.path)
        return super().write(data)


@pytest.fixture(params=["tmpfs", "fake"])
def full_store(request, tmp_path):
    """A store with about 4 MiB of room, and the folder of its pending writes."""
    if request.param == "tmpfs":
        mnt = request.getfixturevalue("small_disk")
        yield ModelStore(str(mnt / "store")), lambda: os.listdir(mnt / "store" / "blobs" / "tmp")
        return
    store = ModelStore(f"memory://full-{tmp_path.name}")
    fake = FakeFullFileSystem(capacity=4 << 20)
    store.blobs.fs = store.catalog.fs = fake
    yield store, lambda: fake.ls(f"{store.blobs.root}/blobs/tmp", detail=False)


def _tiny_model(folder, seed: int) -> dict[str, np.ndarray]:
    folder.mkdir()
    rng = np.random.default_rng(seed)
    tensors = {"w": rng.standard_normal((64, 32)).astype(np.float32)}
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text('{"model_type": "bert"}')
    return tensors


def test_disk_full_mid_import_leaves_store_intact(full_store, tmp_path, minilm_path):
    store, pending = full_store
    tiny = _tiny_model(tmp_path / "tiny", seed=0)
    store.import_path(tmp_path / "tiny", "tiny")
    catalog_before = store.catalog.list()
    blobs_before = set(store.blobs.iter_digests())

    with pytest.raises(StoreError) as info:
        store.import_path(minilm_path, "all-minilm")  # ~90 MB into 4 MiB
    message = str(info.value)
    assert str(minilm_path) in message and "tensor " in message
    assert os.strerror(errno.ENOSPC) in message
    assert isinstance(info.value.__cause__, StoreError)

    assert store.catalog.list() == catalog_before
    fresh = ModelStore(store.url)  # nothing cached: what another process sees
    fresh.blobs.fs = fresh.catalog.fs = store.blobs.fs
    assert [e.name for e in fresh.list()] == ["tiny:latest"]
    _, m = fresh.resolve("tiny")
    (got,) = read_tensors(fresh.blobs, m)
    assert np.array_equal(got.data, tiny["w"])
    assert fresh.verify() == []  # no partial blob under a digest name
    assert pending() == []

    # Chunks written before the disk filled are orphans; gc reclaims them and the
    # store takes new models again.
    victims, nbytes = fresh.gc(dry_run=False, grace_s=0)
    assert set(victims).isdisjoint(blobs_before) and nbytes > 0
    _tiny_model(tmp_path / "tiny2", seed=1)
    fresh.import_path(tmp_path / "tiny2", "tiny2")
    assert [e.name for e in fresh.list()] == ["tiny2:latest", "tiny:latest"]

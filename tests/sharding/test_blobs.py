import hashlib
import uuid

import pytest

from omax.errors import BlobNotFound, DigestMismatch, InvalidRequest
from omax.sharding.blobs import BlobStore, digest_bytes


@pytest.fixture(params=["memory", "local"])
def blobs(request, tmp_path):
    if request.param == "memory":
        return BlobStore(f"memory://blobs-{uuid.uuid4().hex}")
    return BlobStore(str(tmp_path / "store"))


def test_put_get_roundtrip(blobs):
    data = b"hello world" * 1000
    digest = blobs.put_bytes(data)
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert blobs.has(digest)
    assert blobs.size(digest) == len(data)
    assert blobs.get(digest) == data
    with blobs.open(digest) as f:
        assert f.read() == data
    hexd = digest[7:]
    assert blobs.path(digest).endswith(f"blobs/sha256/{hexd[:2]}/{hexd}")
    assert list(blobs.iter_digests()) == [digest]


def test_put_stream_dedups(blobs):
    d1, created1 = blobs.put_stream([b"ab", b"cd"])
    d2, created2 = blobs.put_stream([b"abcd"], expected_digest=d1)
    assert d1 == d2 == digest_bytes(b"abcd")
    assert (created1, created2) == (True, False)


def test_digest_mismatch_leaves_nothing(blobs):
    wrong = digest_bytes(b"other")
    with pytest.raises(DigestMismatch):
        blobs.put_stream([b"data"], expected_digest=wrong)
    assert not blobs.has(wrong)
    assert not blobs.has(digest_bytes(b"data"))
    assert list(blobs.iter_digests()) == []
    assert not blobs.fs.exists(f"{blobs.root}/blobs/tmp") or not blobs.fs.ls(
        f"{blobs.root}/blobs/tmp"
    )


@pytest.mark.parametrize("bad", ["sha256:xyz", "md5:" + "0" * 64, "sha256:" + "A" * 64, ""])
def test_malformed_digest(blobs, bad):
    with pytest.raises(InvalidRequest):
        blobs.has(bad)


def test_missing_blob(blobs):
    missing = digest_bytes(b"nope")
    with pytest.raises(BlobNotFound):
        blobs.get(missing)
    with pytest.raises(BlobNotFound):
        blobs.size(missing)
    assert blobs.delete(missing) is False


def test_corruption_detected(blobs):
    good = blobs.put_bytes(b"good bytes")
    bad = blobs.put_bytes(b"bytes to damage")
    blobs.fs.pipe_file(blobs.path(bad), b"damaged!")
    with pytest.raises(DigestMismatch):
        blobs.get(bad)
    assert blobs.get(bad, verify=False) == b"damaged!"
    assert blobs.verify_all() == [bad]
    assert blobs.verify(good)
    assert blobs.delete(bad) and not blobs.has(bad)


def test_put_file(blobs, tmp_path):
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 100_000)
    digest, created = blobs.put_file(src)
    assert created and blobs.get(digest) == src.read_bytes()


def test_a_local_blob_this_process_hashed_is_not_hashed_again_until_it_changes(
    tmp_path, monkeypatch
):
    """A read skips the re-hash of a file this process wrote or hashed while it stats
    the same; any write to it (even one that puts its modified time back) makes the
    next read hash it again, and find the damage."""
    import os

    import omax.sharding.blobs as blobs_mod

    hashed: list[int] = []

    def counting(data):
        hashed.append(len(data))
        return digest_bytes(data)

    blobs = BlobStore(str(tmp_path / "store"))
    data = bytes(range(256)) * 64
    digest = blobs.put_bytes(data)  # hashed as it was written
    monkeypatch.setattr(blobs_mod, "digest_bytes", counting)
    again = BlobStore(str(tmp_path / "store"))  # another handle on the same store
    assert again.get(digest) == data
    out = bytearray(len(data))
    again.read_into(digest, memoryview(out))
    assert bytes(out) == data and hashed == []
    path = blobs.path(digest)
    st = os.stat(path)
    with open(path, "r+b") as f:  # the same size, its times put back
        f.seek(5)
        f.write(b"\xff")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(DigestMismatch):
        again.get(digest)
    with pytest.raises(DigestMismatch):
        again.read_into(digest, memoryview(out))
    assert len(hashed) == 2
    assert not again.check(digest)  # check always re-hashes: quarantined
    assert again.put_bytes(data) == digest  # healed: trusted again without a hash
    hashed.clear()
    assert again.get(digest) == data and hashed == []
    assert again.verify(digest)  # verify always re-hashes (its own hash, not counted)

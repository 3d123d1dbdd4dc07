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

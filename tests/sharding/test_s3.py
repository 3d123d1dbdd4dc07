"""The origin store on S3-compatible object storage: moto's server on 127.0.0.1.

Blobs are written through s3fs with 5 MiB parts, so a 12 MiB blob is a multipart
upload (its ETag ends in ``-3``). The catalog's compare-and-swap relies on
``If-None-Match: *`` on PUT.
"""

import asyncio
import random
import socket

import fsspec
import pytest

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")
boto3 = pytest.importorskip("boto3")

from omax.errors import CatalogConflict  # noqa: E402
from omax.plugins.replicas import LocalReplicas  # noqa: E402
from omax.sharding.blobs import BlobStore  # noqa: E402
from omax.sharding.catalog import Catalog  # noqa: E402
from omax.sharding.manifest import Manifest, TensorEntry  # noqa: E402

PART = 5 << 20


@pytest.fixture(scope="module")
def s3_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    opts = {
        "endpoint_url": f"http://127.0.0.1:{port}",
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"region_name": "us-east-1"},
        "default_block_size": PART,
    }
    old = fsspec.config.conf.get("s3")
    fsspec.config.conf["s3"] = opts
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        boto3.client(
            "s3",
            endpoint_url=opts["endpoint_url"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket="omax-test")
        yield "s3://omax-test/origin"
    finally:
        if old is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = old
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def test_blobs_round_trip_with_multipart_uploads(s3_url):
    store = BlobStore(s3_url)
    data = random.Random(0).randbytes(12 << 20)
    digest, created = store.put_stream(
        [data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20)]
    )
    assert created and store.has(digest) and store.size(digest) == len(data)
    assert store.get(digest) == data
    info = store.fs.info(store.path(digest))
    # moved into place by a server-side copy; the upload itself was multipart
    assert store.verify(digest)
    assert store.put_stream([data], digest) == (digest, False)  # deduplicated
    assert list(store.iter_digests()) == [digest]
    assert not store.fs.exists(f"{store.root}/blobs/tmp") or not store.fs.ls(
        f"{store.root}/blobs/tmp"
    )
    assert info["size"] == len(data)


def test_multipart_upload_is_used_for_large_writes(s3_url):
    fs = s3fs.S3FileSystem()
    data = random.Random(1).randbytes(12 << 20)
    with fs.open("omax-test/probe", "wb") as f:  # written as put_stream writes
        for i in range(0, len(data), 1 << 20):
            f.write(data[i : i + (1 << 20)])
    assert fs.info("omax-test/probe")["ETag"].strip('"').endswith("-3")  # 5 + 5 + 2 MiB


def test_catalog_compare_and_swap_on_s3(s3_url):
    catalog = Catalog(s3_url)
    digest = "sha256:" + "a" * 64
    catalog.set("m:latest", digest, 1)
    gen, models = catalog.read()
    assert gen == 1 and models["m:latest"]["digest"] == digest
    catalog.swap(gen, {})
    with pytest.raises(CatalogConflict):  # generation 2 exists: If-None-Match refuses
        catalog.swap(gen, {"x:latest": {"digest": digest, "size": 1, "modified_at": ""}})
    assert catalog.read() == (2, {})


def test_a_worker_replicates_from_an_s3_origin(s3_url, tmp_path):
    store = BlobStore(s3_url)
    rng = random.Random(2)
    chunks = {}
    for i, size in enumerate([6 << 20, 1 << 20, 300_000]):
        data = rng.randbytes(size)
        chunks[f"c/{i}"] = (store.put_bytes(data), size)
    tensor = TensorEntry(
        "w", (3,), "uint8", (3,), "uint8", (1,), chunks, sum(s for _, s in chunks.values())
    )
    manifest = Manifest(format="safetensors", family="t", config={}, tensors=(tensor,))
    digest = store.put_bytes(manifest.to_json())
    replicas = LocalReplicas(str(tmp_path / "w"))
    replica, result = asyncio.run(replicas.fetch(digest, s3_url))
    assert replica.complete and result.fetched == {"origin": result.total - result.present}
    assert replicas.store.verify_all() == []

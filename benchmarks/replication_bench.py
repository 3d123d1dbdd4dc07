"""Worker-to-worker replication throughput, against raw loopback TCP in the same run.

Four Dask worker processes with the omax preloads on this machine. A model of random
blobs (1 GiB by default) is seeded onto three workers, then a fourth fetches it:

- from one peer, compared with raw loopback TCP between two processes (target 0.8x),
  and with the least a verified, persisted copy costs: the same TCP stream into a
  hand-written receiver that hashes and writes each blob (no Dask, no asyncio),
- from three peers (target: faster than from one),
- then a model sharing 90% of its chunks with the first: bytes moved (target <= 15%).

Run: ``.venv/bin/python benchmarks/replication_bench.py [--size-mb 1024]``.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import random
import shutil
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _results import append_results  # noqa: E402

from omax.sharding.blobs import BlobStore  # noqa: E402
from omax.sharding.manifest import Manifest, TensorEntry  # noqa: E402
from tests.cluster import omax_cluster  # noqa: E402

BLOB = 16 << 20


def _sink(port: int, n: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        buf = bytearray(4 << 20)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = s.recv_into(view)
            if not k:
                break
            got += k


def _verified_sink(port: int, n: int, folder: str) -> None:
    """Receive 16 MiB blobs; hash and write each to a file in a thread while the next
    arrives: the least a verified, persisted transfer costs, with no framework."""
    pool = ThreadPoolExecutor(1)
    pending = None
    buffers = [bytearray(BLOB), bytearray(BLOB)]

    def land(view: memoryview, i: int) -> None:
        hashlib.sha256(view).digest()
        with open(os.path.join(folder, str(i)), "wb") as f:
            f.write(view)

    with socket.create_connection(("127.0.0.1", port)) as s:
        got = 0
        i = 0
        while got < n:
            view = memoryview(buffers[i % 2])[: min(BLOB, n - got)]
            filled = 0
            while filled < len(view):
                k = s.recv_into(view[filled:])
                if not k:
                    return
                filled += k
            if pending is not None:
                pending.result()
            pending = pool.submit(land, view, i)
            got += filled
            i += 1
        if pending is not None:
            pending.result()


def raw_tcp(nbytes: int, verified_into: str = "") -> float:
    """Bytes per second from one process to another over loopback TCP; with
    ``verified_into``, the receiver also hashes and writes every blob there."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    target, args = (
        (_verified_sink, (port, nbytes, verified_into))
        if verified_into
        else (_sink, (port, nbytes))
    )
    proc = multiprocessing.get_context("spawn").Process(target=target, args=args)
    proc.start()
    conn, _ = srv.accept()
    block = os.urandom(4 << 20)
    t = time.perf_counter()
    sent = 0
    view = memoryview(block)
    while sent < nbytes:
        n = min(len(block), nbytes - sent)
        conn.sendall(view[:n])
        sent += n
    proc.join()
    dt = time.perf_counter() - t
    conn.close()
    srv.close()
    return sent / dt


def sha256_rate() -> float:
    data = os.urandom(256 << 20)
    t = time.perf_counter()
    hashlib.sha256(data).digest()
    return len(data) / (time.perf_counter() - t)


def make_model(url: str, blobs: list[bytes], tag: int) -> tuple[str, int]:
    store = BlobStore(url)
    chunks = {f"c/{i}": (store.put_bytes(b), len(b)) for i, b in enumerate(blobs)}
    n = len(blobs)
    nbytes = sum(len(b) for b in blobs)
    tensor = TensorEntry("w", (n,), "uint8", (n,), "uint8", (1,), chunks, nbytes)
    manifest = Manifest(
        format="safetensors", family="bench", config={"tag": tag}, tensors=(tensor,)
    )
    raw = manifest.to_json()
    return store.put_bytes(raw), nbytes + len(raw)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=1024)
    args = ap.parse_args()
    n_blobs = max(10, args.size_mb * (1 << 20) // BLOB)
    tmp = Path(tempfile.mkdtemp(prefix="omax-repl-bench-"))
    origin = str(tmp / "origin")
    rng = random.Random(0)
    blobs = [rng.randbytes(BLOB) for _ in range(n_blobs)]
    digest, total = make_model(origin, blobs, 1)
    shared = list(blobs)
    for i in range(0, n_blobs, 10):  # 10% of the chunks differ
        shared[i] = rng.randbytes(BLOB)
    digest2, total2 = make_model(origin, shared, 2)
    del blobs, shared
    rows = []
    try:
        settings = {"omax.store.url": origin, "omax.worker.store": str(tmp / "w" / "{name}")}
        with omax_cluster(settings, n_workers=4) as client:
            a, b, c, d = sorted(client.sync(client.scheduler.identity, n_workers=-1)["workers"])

            def rep(worker: str, dg: str, peers: list[str]) -> tuple[float, dict]:
                t = time.perf_counter()
                r = client.sync(client.rpc(worker).omax_replicate, digest=dg, peers=peers)
                return time.perf_counter() - t, r

            rep(a, digest, [])  # seed from the origin
            rep(b, digest, [a])
            rep(c, digest, [a])
            tcp = max(raw_tcp(total) for _ in range(2))
            (tmp / "sink").mkdir()
            tcp_verified = max(raw_tcp(total, str(tmp / "sink")) for _ in range(2))
            shutil.rmtree(tmp / "sink")
            dt1, r1 = rep(d, digest, [a])
            assert r1["fetched"] == {a: total - r1["present"]}, r1
            one = r1["fetched_bytes"] / dt1
            client.sync(client.rpc(d).omax_drop_replica, digest=digest)
            dt3, r3 = rep(d, digest, [a, b, c])
            three = r3["fetched_bytes"] / dt3
            rep(a, digest2, [])
            _, r2 = rep(d, digest2, [a])
            moved = r2["fetched_bytes"] / total2
            gb = 1e9
            rows = [
                ("model size", f"{total / 2**30:.2f} GiB", ">= 1 GB"),
                ("raw loopback TCP, process to process", f"{tcp / gb:.2f} GB/s", "-"),
                ("sha256 on one core (verification cost)", f"{sha256_rate() / gb:.2f} GB/s", "-"),
                ("worker to worker, one source", f"{one / gb:.2f} GB/s", "-"),
                ("  ratio to raw TCP", f"{one / tcp:.2f}x", ">= 0.8x"),
                (
                    "raw loopback TCP + sha256 + write, hand-written sink",
                    f"{tcp_verified / gb:.2f} GB/s",
                    "-",
                ),
                ("  ratio of worker to worker to that", f"{one / tcp_verified:.2f}x", "-"),
                ("worker to worker, three sources", f"{three / gb:.2f} GB/s", "> one source"),
                ("90%-shared model: bytes moved", f"{100 * moved:.1f}%", "<= 15%"),
            ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    append_results(
        "Replication: worker to worker",
        rows,
        f".venv/bin/python benchmarks/replication_bench.py --size-mb {args.size_mb}",
    )


if __name__ == "__main__":
    main()

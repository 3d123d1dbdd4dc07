"""Choosing a source per blob (pure) and the fetch loop over real local stores."""

import asyncio
from pathlib import Path

import pytest

from omax.errors import StoreError
from omax.sharding.blobs import BlobStore
from omax.sharding.replication import ORIGIN, fetch_blobs, plan_sources


def test_plan_spreads_bytes_over_peers_and_puts_the_origin_last():
    sizes = {f"b{i}": s for i, s in enumerate([8, 8, 4, 4, 2, 2, 1, 1])}
    plan = plan_sources(sizes, present={"b7"}, peers=["p1", "p2", "p3"])
    assert "b7" not in plan
    assert list(plan)[:2] == ["b0", "b1"]  # largest first
    firsts: dict[str, int] = {}
    for blob, order in plan.items():
        assert order[-1] == ORIGIN and sorted(order[:-1]) == ["p1", "p2", "p3"]
        firsts[order[0]] = firsts.get(order[0], 0) + sizes[blob]
    assert sorted(firsts.values()) == [9, 10, 10]
    plan = plan_sources(sizes, (), ["p1", "p2"], bad={("b0", "p1"), ("b0", ORIGIN)})
    assert plan["b0"] == ("p2",)
    assert plan_sources({"x": 1}, (), [], origin=False) == {"x": ()}


def _stores(tmp_path, n):
    return [BlobStore(str(tmp_path / f"s{i}")) for i in range(n)]


def test_fetch_reads_from_peers_verifies_and_refetches_damaged_bytes(tmp_path):
    peer1, peer2, local = _stores(tmp_path, 3)
    blobs = [bytes([i]) * (100_000 + i) for i in range(20)]
    sizes = {}
    for data in blobs:
        d = peer1.put_bytes(data)
        peer2.put_bytes(data)
        sizes[d] = len(data)
    victim = max(sizes, key=lambda d: sizes[d])
    path = peer1.path(victim)
    raw = bytearray(Path(path).read_bytes())
    raw[7] ^= 1
    Path(path).write_bytes(bytes(raw))
    peers = {"p1": peer1, "p2": peer2}
    calls = []

    async def read(peer, digest):
        calls.append(peer)
        with open(peers[peer].path(digest), "rb") as f:
            while piece := f.read(1000):
                yield piece

    bad = []
    seen = []
    result = asyncio.run(
        fetch_blobs(
            local,
            sizes,
            ["p1", "p2"],
            read,
            None,
            on_bad=bad.append,
            on_progress=lambda d, t: seen.append(d),
        )
    )
    assert [(b.source, b.blob) for b in bad] == [("p1", victim)]
    assert result.fetched_bytes == sum(sizes.values())
    assert set(result.fetched) == {"p1", "p2"}  # both peers served
    assert all(local.verify(d) for d in sizes)
    assert seen[-1] == sum(sizes.values())
    # a second fetch moves nothing
    again = asyncio.run(fetch_blobs(local, sizes, ["p1"], read, None))
    assert again.fetched_bytes == 0 and again.present == again.total


def test_fetch_falls_back_to_the_origin_and_fails_loudly_without_one(tmp_path):
    origin, local, other = _stores(tmp_path, 3)
    d = origin.put_bytes(b"x" * 1000)

    async def gone(peer, digest):
        yield b"half"
        raise OSError("peer left")

    result = asyncio.run(fetch_blobs(local, {d: 1000}, ["p1"], gone, origin))
    assert result.fetched == {ORIGIN: 1000}
    with pytest.raises(StoreError, match="could not be fetched"):
        asyncio.run(fetch_blobs(other, {d: 1000}, ["p1"], gone, None))


def test_a_stream_of_the_wrong_length_is_a_bad_source_and_leaves_nothing_behind(tmp_path):
    origin, local = _stores(tmp_path, 2)
    data = bytes(range(256)) * 400
    d = origin.put_bytes(data)

    async def short(peer, digest):
        yield data[:1000]

    async def long(peer, digest):
        yield data
        yield b"!"

    for stream in (short, long):
        bad = []
        result = asyncio.run(
            fetch_blobs(local, {d: len(data)}, ["p1"], stream, origin, on_bad=bad.append)
        )
        assert result.fetched == {ORIGIN: len(data)}
        assert [b.source for b in bad] == ["p1"] and "bytes" in bad[0].reason
        assert local.get(d) == data
        assert not list((tmp_path / "s1" / "blobs" / "tmp").iterdir())
        local.delete(d)

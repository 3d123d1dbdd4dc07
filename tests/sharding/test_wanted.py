"""Wanted counts saved next to the catalog: a save waits for the load it must not undo."""

import asyncio
import uuid

from omax.sharding import wanted
from omax.sharding.wanted import WantedFile, read_wanted, write_wanted


def test_a_save_during_the_load_writes_the_merged_counts(monkeypatch):
    url = f"memory://omax-wanted-{uuid.uuid4().hex}"
    write_wanted(url, {"sha256:saved": 2})
    slow_read = wanted.read_wanted

    def read(u):
        import time

        time.sleep(0.05)  # the save below is asked for meanwhile
        return slow_read(u)

    monkeypatch.setattr(wanted, "read_wanted", read)
    counts = {"sha256:new": 1}

    def merge(saved):
        counts.update({**saved, **counts})

    async def main():
        f = WantedFile(url)
        load = asyncio.ensure_future(f.load(merge))
        await asyncio.sleep(0)
        await f.save(lambda: counts)
        await load

    asyncio.run(main())
    assert read_wanted(url) == {"sha256:saved": 2, "sha256:new": 1}


def test_an_unchanged_save_writes_nothing_and_a_failed_read_is_survived(monkeypatch):
    url = f"memory://omax-wanted-{uuid.uuid4().hex}"
    writes = []
    monkeypatch.setattr(wanted, "write_wanted", lambda u, w: writes.append(dict(w)))

    def broken(u):
        raise OSError("store down")

    async def main():
        f = WantedFile(url)
        await f.save(lambda: {})  # as saved: nothing to write
        await f.save(lambda: {"sha256:a": 1})
        await f.save(lambda: {"sha256:a": 1})
        monkeypatch.setattr(wanted, "read_wanted", broken)
        merged = []
        await f.load(merged.append)  # logged, not raised; nothing merged
        return merged

    assert asyncio.run(main()) == [] and writes == [{"sha256:a": 1}]

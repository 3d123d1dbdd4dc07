"""Stream plumbing without HTTP: the runtime's iterator is always closed, cleanly."""

from __future__ import annotations

import asyncio

import anyio

from omax.serve.streaming import ndjson_response, prime


def _source(log: list[str], delay: float = 0.0):
    async def gen():
        try:
            for i in range(100):
                if delay:
                    await asyncio.sleep(delay)
                yield {"i": i}
        finally:
            await asyncio.sleep(0.01)  # cleanup that awaits, like an RPC to the actor
            log.append("cleaned")

    return gen()


def test_closing_the_body_at_a_yield_closes_the_source():
    async def main():
        log: list[str] = []
        primed = await prime(_source(log))
        body = ndjson_response(primed, lambda x: [x]).body_iterator
        assert (await body.__anext__()).startswith(b'{"i":0}\n{"i":1}\n')  # ready at once
        await body.aclose()
        return log

    assert asyncio.run(main()) == ["cleaned"]


def test_items_ready_together_go_out_in_one_write():
    """One actor poll's chunks reach the request queue together: one send, not one per
    token; an item that arrives later starts the next write."""

    async def main():
        queue: asyncio.Queue[dict | None] = asyncio.Queue()

        async def gen():
            while (item := await queue.get()) is not None:
                yield item

        for i in range(3):
            queue.put_nowait({"i": i})
        primed = await prime(gen())
        body = ndjson_response(primed, lambda x: [x]).body_iterator
        first = await body.__anext__()
        asyncio.get_running_loop().call_later(0.05, queue.put_nowait, {"i": 3})
        asyncio.get_running_loop().call_later(0.06, queue.put_nowait, None)
        rest = [part async for part in body]
        return first, rest

    first, rest = asyncio.run(main())
    assert first == b'{"i":0}\n{"i":1}\n{"i":2}\n'
    assert rest == [b'{"i":3}\n']


def test_cancelling_mid_fetch_lets_the_source_clean_up():
    async def main():
        log: list[str] = []
        primed = await prime(_source(log, delay=0.05))
        body = ndjson_response(primed, lambda x: [x]).body_iterator
        with anyio.move_on_after(0.12):
            async for _ in body:
                pass
        return log

    assert asyncio.run(main()) == ["cleaned"]


def test_error_before_first_item_raises_and_closes():
    async def gen():
        raise ValueError("up front")
        yield  # pragma: no cover

    async def main():
        try:
            await prime(gen())
        except ValueError as err:
            return str(err)

    assert asyncio.run(main()) == "up front"


def test_coroutine_returning_an_iterator_is_accepted():
    async def start():
        return _source([])

    async def main():
        primed = await prime(start())
        return primed.first

    assert asyncio.run(main()) == {"i": 0}


def test_a_chunk_carrying_an_error_raises_it_with_its_type():
    import pytest

    from omax.engine.request import GenerateChunk
    from omax.errors import EngineDead, EngineError, to_wire
    from omax.serve.streaming import raise_for_chunk

    raise_for_chunk(GenerateChunk(text="fine"))
    with pytest.raises(EngineError, match="engine step failed") as bare:
        raise_for_chunk(GenerateChunk(done=True, done_reason="error", error="engine step failed"))
    assert type(bare.value) is EngineError and bare.value.status == 500
    wired = GenerateChunk(done=True, done_reason="error", error=to_wire(EngineDead("gone")))  # type: ignore[arg-type]
    with pytest.raises(EngineDead, match="gone"):
        raise_for_chunk(wired)

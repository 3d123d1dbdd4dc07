"""ModelActor.poll with ``linger``: a started stream's chunks travel together, while
the first chunk and the last are never held back."""

from __future__ import annotations

import asyncio
import pickle
import time

from omax.engine.actor import ModelActor
from omax.engine.request import GenerateRequest, SamplingOptions

from .test_actor import tiny_source


async def _stream(
    actor: ModelActor, linger: float, wire: bool = False
) -> tuple[str, list[int], float]:
    """(text, chunks per poll reply, seconds to the first reply) of one greedy request;
    ``wire``: through ``poll_wire``, as the front door polls."""
    req = GenerateRequest(
        model="t", prompt="word " * 8, options=SamplingOptions(temperature=0, num_predict=40)
    )
    t0 = time.monotonic()
    rid = await actor.submit(req)
    text, sizes, first = "", [], 0.0
    while True:
        if wire:
            reply = pickle.loads(await actor.poll_wire([rid], 5.0, linger))
        else:
            reply = await actor.poll([rid], 5.0, linger)
        got = reply.get(rid, [])
        if not got:
            continue
        if not sizes:
            first = time.monotonic() - t0
        sizes.append(len(got))
        text += "".join(c.text for c in got)
        if got[-1].done:
            return text, sizes, first


def test_linger_batches_a_started_stream_without_holding_its_first_or_last_chunk():
    actor = ModelActor(
        "sha256:tiny", load_source=tiny_source, engine_options={"max_batch": 4, "max_ctx": 256}
    )

    async def main():
        await actor.load()
        try:
            runs = [_stream(actor, 0.0), _stream(actor, 10.0), _stream(actor, 10.0, wire=True)]
            return [await run for run in runs]
        finally:
            await actor.close()

    (plain, plain_sizes, _), (text, sizes, first), (wired, *_) = asyncio.run(main())
    assert text == plain == wired  # same tokens, fewer replies
    assert first < 5.0  # the first chunk came at once, not after the 10 s linger
    # after the first reply, the rest came in at most two: the linger ended with the
    # last chunk instead of running its 10 s
    assert len(sizes) <= 3 < len(plain_sizes)
    assert not actor._streaming  # finished streams are forgotten

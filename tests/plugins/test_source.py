"""A ModelActor loads a model straight from a blob store through zarr."""

import asyncio

from omax.engine.actor import ModelActor
from omax.engine.request import GenerateRequest, SamplingOptions
from omax.sharding.modelstore import ModelStore
from tests.tiny import tiny_llama


def test_actor_loads_from_a_store_url(tmp_path):
    store = ModelStore(str(tmp_path / "store"))
    store.import_path(tiny_llama(tmp_path / "tiny"), "tiny")
    digest, _ = store.resolve("tiny")

    async def run():
        actor = ModelActor(digest, str(tmp_path / "store"))
        await actor.load()
        rid = await actor.submit(
            GenerateRequest(
                model="tiny", prompt="hello", raw=True, options=SamplingOptions(num_predict=5)
            )
        )
        chunks = []
        while not (chunks and chunks[-1].done):
            chunks += (await actor.poll([rid], 0.5)).get(rid, [])
        await actor.close()
        return chunks

    chunks = asyncio.run(run())
    assert chunks[-1].done and chunks[-1].metrics.eval_count == 5

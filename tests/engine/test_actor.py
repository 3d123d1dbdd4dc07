"""ModelActor under a real LocalCluster; 200 mixed requests with cancels drain to zero."""

from __future__ import annotations

import asyncio
import random

import pytest

from omax.engine.actor import ModelActor
from omax.engine.request import GenerateRequest, SamplingOptions

from .conftest import state_dict_raw, tiny_llama


def tiny_source():
    from omax.engine.spec import ModelSpec

    from .conftest import SMOLLM2_GGUF, gguf_spec

    model = tiny_llama()
    s = gguf_spec(SMOLLM2_GGUF)
    spec = ModelSpec(
        config=model.config.to_dict(),
        tokenizer_json=s.tokenizer_json,
        tokenizer_config=s.tokenizer_config,
        format="safetensors",
    )
    return spec, state_dict_raw(model)


@pytest.mark.cluster
def test_actor_in_local_cluster():
    from distributed import Client, LocalCluster

    async def main():
        async with (
            LocalCluster(
                n_workers=1, processes=False, asynchronous=True, dashboard_address=":0"
            ) as cluster,
            Client(cluster, asynchronous=True) as client,
        ):
            actor = await client.submit(
                ModelActor,
                "sha256:tiny",
                "",
                load_source=tiny_source,
                engine_options={"max_batch": 8, "max_ctx": 256},
                actor=True,
            )
            info = await actor.load()
            assert info["load_duration"] > 0
            rng = random.Random(0)
            ids = []
            for i in range(200):
                req = GenerateRequest(
                    model="t",
                    prompt="word " * rng.randint(1, 40),
                    options=SamplingOptions(seed=i, num_predict=rng.randint(1, 24)),
                )
                ids.append(await actor.submit(req))
            cancelled = set(rng.sample(ids, 30))
            for rid in cancelled:
                await actor.cancel(rid)
            reasons = {}
            pending = set(ids)
            while pending:
                got = await actor.poll(list(pending), 0.2)
                for rid, chunks in got.items():
                    if chunks[-1].done:
                        reasons[rid] = chunks[-1].done_reason
                        pending.discard(rid)
            assert set(reasons) == set(ids)
            assert set(reasons.values()) <= {"stop", "length", "cancel"}
            st = await actor.stats()
            for _ in range(50):
                if st["live"] == 0:
                    break
                await asyncio.sleep(0.05)
                st = await actor.stats()
            assert st["live"] == 0 and st["kv_tokens"] == 0 and st["kv_bytes"] == 0
            await actor.close()

    asyncio.run(main())

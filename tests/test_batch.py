"""``omax.batch`` on a real two-worker cluster with the demo models.

One LocalCluster (two worker processes with the omax preloads, two loaded replicas
of each model) for the module; SmolLM2 (``smollm2:135m``) and all-MiniLM imported into
its origin store. Batch answers are compared with the same prompts sent one at a time
through ``ClusterRuntime``, the front door's path. The pure policy is tested first,
without a cluster.
"""

from __future__ import annotations

import asyncio
import math
import time

import dask.bag as db
import pandas as pd
import pytest

import omax
from omax.batch import Failed, check_items, chunks, merge
from omax.engine.request import EmbedRequest, GenerateRequest, SamplingOptions
from omax.errors import InvalidRequest, ModelNotFound
from omax.serve.cluster import ClusterRuntime
from omax.sharding.bundled import minilm_folder_path, smollm2_gguf_path
from omax.sharding.modelstore import ModelStore
from tests.cluster import omax_cluster

DEMO = "smollm2:135m"
MINILM = "all-minilm"
# A seed pins a request to batch-invariant kernels: the same text alone and batched.
GREEDY = {"temperature": 0, "seed": 1, "num_predict": 8}
PROMPTS = [
    "Name a colour.",
    "What is 2 + 2?",
    "Say hello.",
    "Name a fruit.",
    "What is the capital of France?",
    "Name an animal.",
]
slow = pytest.mark.cluster(pytest.mark.slow)  # a real cluster and the demo models
TEXTS = ["The cat sat on the mat.", "A dog ran in the park.", "Stocks fell today.", "Hello"]


# ---- the policy, plain data ------------------------------------------------------------


def test_check_items_fails_what_is_not_a_string():
    checked = check_items(["a", 3, None, "b"])
    assert checked[0] is None and checked[3] is None
    assert checked[1] == Failed("item 1 of the partition is a int, not a string", "InvalidRequest")
    assert checked[2].type == "InvalidRequest" and "NoneType" in checked[2].error


def test_merge_puts_answers_back_in_order():
    checked = [None, Failed("no"), None]
    assert merge(checked, {0: "x", 2: "z"}) == ["x", Failed("no"), "z"]
    assert chunks([0, 2, 3, 5, 7], 2) == [[0, 2], [3, 5], [7]]


def test_omax_batch_is_an_attribute_of_the_package():
    assert omax.batch.generate is not None and omax.batch.Failed is Failed


# ---- on a cluster ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batch")
    store = ModelStore(str(tmp / "origin"))
    store.import_path(smollm2_gguf_path(), DEMO)
    store.import_path(minilm_folder_path(), MINILM)
    settings = {
        "omax.store.url": str(tmp / "origin"),
        "omax.worker.store": str(tmp / "w" / "{name}"),
        "omax.placement.loaded-replicas": 2,
        "omax.worker.cpu-threads": 1,
    }
    with omax_cluster(settings, n_workers=2, threads_per_worker=2, memory_limit=0) as client:
        yield client


def one_by_one(client, prompts=(), texts=()):
    """Each prompt and each text sent alone, in turn, as the HTTP front door sends it."""

    async def run():
        runtime = await ClusterRuntime.connect(client.scheduler.address)
        try:
            answers = []
            for p in prompts:
                req = GenerateRequest(model=DEMO, prompt=p, options=SamplingOptions(**GREEDY))
                answers.append("".join([c.text async for c in runtime.generate(req)]))
            vectors = []
            for t in texts:
                out = await runtime.embed(EmbedRequest(model=MINILM, inputs=(t,)))
                vectors.append(list(out.embeddings[0]))
            return answers, vectors
        finally:
            await runtime.close()

    return asyncio.run(run())


def close(a, b):
    return len(a) == len(b) and all(
        math.isclose(x, y, abs_tol=1e-4) for x, y in zip(a, b, strict=True)
    )


@slow
def test_generate_over_a_bag_keeps_order_and_isolates_a_bad_item(cluster):
    items = PROMPTS[:3] + [42] + PROMPTS[3:]
    out = omax.batch.generate(db.from_sequence(items, npartitions=7), DEMO, GREEDY)
    assert isinstance(out, db.Bag) and out.npartitions == 7
    result = out.compute()
    expected, _ = one_by_one(cluster, PROMPTS)
    bad = result.pop(3)
    assert isinstance(bad, Failed) and bad.type == "InvalidRequest" and "int" in bad.error
    assert result == expected
    assert all(isinstance(r, str) and r for r in result)


@slow
def test_generate_over_a_dataframe_column(cluster):
    import dask.dataframe as dd

    frame = dd.from_pandas(
        pd.DataFrame({"q": PROMPTS[:4] + [None]}, index=[10, 11, 12, 13, 14]), npartitions=2
    )
    out = omax.batch.generate(frame["q"], DEMO, GREEDY)
    assert isinstance(out, dd.Series) and out.npartitions == 2
    frame["a"] = out  # as a notebook adds a column
    answered = frame.compute()
    result = answered["a"]
    assert list(result.index) == [10, 11, 12, 13, 14]
    expected, _ = one_by_one(cluster, PROMPTS[:4])
    assert result.tolist()[:4] == expected
    failed = frame["a"].map(lambda x: isinstance(x, Failed), meta=(None, bool)).compute()
    assert failed.tolist() == [False] * 4 + [True]
    assert isinstance(result[14], Failed) and result[14].type == "InvalidRequest"


@slow
def test_embed_over_a_bag_and_a_column_with_failing_items(cluster):
    import dask.dataframe as dd

    too_long = "word " * 2000  # past MiniLM's 512 tokens: refused when not truncated
    items = [TEXTS[0], too_long, TEXTS[1], 7, TEXTS[2], TEXTS[3]]
    _, expected = one_by_one(cluster, texts=TEXTS)

    bag = omax.batch.embed(db.from_sequence(items, npartitions=2), MINILM, truncate=False)
    result = bag.compute()
    assert result[1].type == "InvalidRequest" and "context length" in result[1].error
    assert result[3].type == "InvalidRequest"
    good = [result[i] for i in (0, 2, 4, 5)]
    assert all(close(a, b) for a, b in zip(good, expected, strict=True)), "differs from one by one"

    column = dd.from_pandas(pd.DataFrame({"t": TEXTS}), npartitions=2)["t"]
    vectors = omax.batch.embed(column, MINILM).compute().tolist()
    assert all(close(a, b) for a, b in zip(vectors, expected, strict=True))


def _prefilled(dask_worker):
    """Prompt tokens each loaded model actor on this worker has prefilled since its load."""
    return {
        key: actor.engine.stats()["prefilled_tokens"]
        for key, actor in dask_worker.state.actors.items()
        if getattr(actor, "engine", None) is not None
    }


def _actor_counts(client, keys):
    seen = {}
    for counts in client.run(_prefilled).values():
        seen.update(counts)
    return [seen.get(k, 0) for k in keys]


@slow
def test_partitions_spread_over_every_loaded_replica(cluster):
    deadline = time.time() + 120
    while True:  # loaded-replicas 2: the first requests had a second copy loaded
        rows = [r for r in cluster.sync(cluster.scheduler.omax_ps) if r["name"] == DEMO]
        if len(rows) == 2 or time.time() > deadline:
            break
        time.sleep(0.5)
    assert len({r["worker"] for r in rows}) == 2, rows
    keys = [r["key"] for r in rows]
    before = _actor_counts(cluster, keys)
    prompts = [f"Count to {n}." for n in range(8)]
    out = omax.batch.generate(db.from_sequence(prompts, npartitions=4), DEMO, GREEDY).compute()
    assert all(isinstance(r, str) and r for r in out)
    after = _actor_counts(cluster, keys)
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)


@slow
def test_an_unknown_model_and_bad_options_are_refused_at_once(cluster):
    bag = db.from_sequence(PROMPTS, npartitions=2)
    with pytest.raises(ModelNotFound):
        omax.batch.generate(bag, "no-such-model:1b")
    with pytest.raises(InvalidRequest, match="temperature"):
        omax.batch.generate(bag, DEMO, {"temperature": -1})
    with pytest.raises(TypeError, match="Bag or a dask.dataframe.Series"):
        omax.batch.embed(PROMPTS, MINILM)

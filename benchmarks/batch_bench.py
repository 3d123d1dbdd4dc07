"""``omax.batch.generate`` on the embedded cluster against the engine's own 16 streams.

Run: .venv/bin/python benchmarks/batch_bench.py [--prompts 256] [--tokens 32] [--partitions 8]
(``--no-record`` prints without appending to RESULTS.md.)

1. The engine in this process (the server's engine settings): 16 short prompts at
   once, greedy, ``--tokens`` each; aggregate tokens/s from submission to the last
   token, prefill included (engine_bench's 16-stream measure).
2. The embedded cluster ``omax serve`` starts (same plugins, one worker on a CPU-only
   machine), the model loaded first: ``--prompts`` short prompts in a dask.bag of
   ``--partitions`` partitions through ``omax.batch.generate``, wall clock of
   ``compute()``. Tokens are counted by tokenizing the answers, for both sides alike.
3. The engine again; the target compares with the mean of the two engine runs
   (this machine drifts between minutes): batch >= 0.9x.

The engine is closed before the cluster starts, so they never share the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import append_results  # noqa: E402

MODEL = "smollm2:135m"


def prompts(n: int) -> list[str]:
    return [f"Tell me about topic {i}." for i in range(n)]


def engine_run(store, tokens: int) -> tuple[float, object]:
    """Aggregate tokens/s of 16 greedy streams in-process; and the tokenizer."""
    from omax.config import settings
    from omax.engine.engine import Engine
    from omax.engine.request import GenerateRequest, SamplingOptions
    from omax.sharding.spec_source import store_source

    digest, _ = store.resolve(MODEL)
    cfg = settings()
    engine = Engine.load(
        *store_source(store.blobs, digest), dtype=cfg.engine_dtype, quant=cfg.engine_quant
    )
    try:
        opts = SamplingOptions(temperature=0, num_predict=tokens)
        reqs = [GenerateRequest(model=MODEL, prompt=p, options=opts) for p in prompts(16)]
        list(engine.generate(reqs[0]))  # first-call set-up off the clock
        ids = [engine.submit(r) for r in reqs]
        texts = {rid: "" for rid in ids}
        pending = set(ids)
        t0 = time.perf_counter()
        while pending:
            for rid, chunks in engine.poll(list(pending), timeout=1.0).items():
                for c in chunks:
                    texts[rid] += c.text
                    if c.done:
                        pending.discard(rid)
        seconds = time.perf_counter() - t0
        tok = engine.tokenizer
        n = sum(len(tok.encode(t, add_special_tokens=False)) for t in texts.values())
        return n / seconds, tok
    finally:
        engine.close()


async def batch_run(origin: str, n: int, tokens: int, partitions: int, count) -> float:
    """Tokens/s of ``n`` prompts through omax.batch.generate on the embedded cluster."""
    import dask.bag as db
    import dask.config
    from distributed import Client

    import omax
    from omax.embedded import start_cluster
    from omax.sharding.modelstore import ModelStore

    with dask.config.set({"omax.store.url": origin, "omax.serve.keep-alive": -1}):
        cluster = await start_cluster(None, ":0")
    try:
        async with Client(cluster, asynchronous=True) as client:
            digest = ModelStore(origin).resolve(MODEL)[0]
            loaded = await client.scheduler.omax_ensure(name=MODEL, digest=digest)
            assert "actors" in loaded, loaded

            def compute() -> list:
                with Client(cluster.scheduler_address) as sync_client:
                    bag = db.from_sequence(prompts(n), npartitions=partitions)
                    options = {"temperature": 0, "num_predict": tokens}
                    out = omax.batch.generate(bag, MODEL, options, client=sync_client)
                    t0 = time.perf_counter()
                    answers = out.compute()
                    return [time.perf_counter() - t0, answers]

            seconds, answers = await asyncio.to_thread(compute)
            failed = [a for a in answers if not isinstance(a, str)]
            assert not failed, failed[:3]
            return sum(count(a) for a in answers) / seconds
    finally:
        await cluster.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--no-record", action="store_true", help="print only (a smoke run)")
    args = ap.parse_args()

    from omax.sharding import bundled
    from omax.sharding.modelstore import ModelStore

    origin = str(Path(tempfile.mkdtemp(prefix="omax-batch-bench-")) / "origin")
    store = ModelStore(origin)
    store.import_path(bundled.smollm2_gguf_path(), MODEL)

    first, tokenizer = engine_run(store, args.tokens)
    print(f"engine, 16 streams: {first:.1f} tok/s")

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    batch = asyncio.run(batch_run(origin, args.prompts, args.tokens, args.partitions, count))
    print(f"omax.batch.generate, {args.prompts} prompts: {batch:.1f} tok/s")
    second, _ = engine_run(store, args.tokens)
    print(f"engine, 16 streams again: {second:.1f} tok/s")
    engine = statistics.mean([first, second])
    rows = [
        ("engine 16 streams aggregate tok/s (two runs)", f"{first:.1f} / {second:.1f}", "n/a"),
        (f"omax.batch.generate {args.prompts} prompts tok/s", f"{batch:.1f}", "n/a"),
        ("batch / engine", f"{batch / engine:.2f}", ">= 0.9"),
    ]
    if args.no_record:
        for row in rows:
            print(*row, sep="  |  ")
    else:
        append_results("batch_bench", rows, " ".join(["python", *sys.argv]))


if __name__ == "__main__":
    main()

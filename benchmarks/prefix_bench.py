"""Prefix reuse benchmark: time to first token of turn 2 of a ~1000-token chat.

    .venv/bin/python benchmarks/prefix_bench.py [--quant int4|int8|bf16|none] [--repeat 3]

Loads SmolLM2 (the GGUF the engine tests use) once, then for engines with and without
prefix rows (``Engine(prefix_rows=...)``, sharing the loaded weights) runs turn 1 of a
chat whose first user message is ~1000 tokens, then turn 2 resending the history with
one more question, and measures turn 2's time from ``submit`` to its first output
chunk, and the prompt tokens the engine prefilled vs copied from the cache for it.
Prints best/median of ``--repeat`` runs and appends them to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PARAGRAPH = (
    "The river starts high in the mountains, where snow melts each spring and feeds "
    "a hundred small streams. They join in the valley, pass the old mill and the "
    "stone bridge, and slow down as the land flattens towards the sea. "
)


def first_chunk_ms(engine, req) -> tuple[float, object]:
    """Milliseconds from submit to the first chunk, and the final chunk."""
    t0 = time.perf_counter()
    rid = engine.submit(req)
    first, last = None, None
    while last is None:
        for c in engine.poll([rid], timeout=5.0).get(rid, []):
            if first is None:
                first = (time.perf_counter() - t0) * 1e3
            if c.done:
                last = c
    assert first is not None
    return first, last


def settle(engine) -> dict:
    for _ in range(500):
        st = engine.stats()
        if st["live"] == 0:
            return st
        time.sleep(0.01)
    return st


def chat_turn2(engine, paragraphs: int, reply_tokens: int) -> dict:
    from omax.engine.request import GenerateRequest, Message, SamplingOptions

    opts = SamplingOptions(temperature=0.0, num_predict=reply_tokens)
    history = [Message(role="user", content=PARAGRAPH * paragraphs + "Summarise this.")]
    text = ""  # the reply as a chat client would resend it
    r1 = GenerateRequest(model="s", messages=tuple(history), options=opts)
    rid = engine.submit(r1)
    while True:
        chunks = engine.poll([rid], timeout=5.0).get(rid, [])
        text += "".join(c.text for c in chunks)
        if chunks and chunks[-1].done:
            break
    history += [
        Message(role="assistant", content=text),
        Message(role="user", content="Where does the river end?"),
    ]
    before = settle(engine)
    ttft, done = first_chunk_ms(
        engine,
        GenerateRequest(
            model="s",
            messages=tuple(history),
            options=SamplingOptions(temperature=0.0, num_predict=1),
        ),
    )
    after = settle(engine)
    return {
        "ttft_ms": ttft,
        "prompt": done.metrics.prompt_eval_count,
        "prefilled": after["prefilled_tokens"] - before["prefilled_tokens"],
        "reused": after["reused_tokens"] - before["reused_tokens"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quant", default="int4", help="int4 (default), int8, bf16 or none (exact)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--paragraphs", type=int, default=19, help="~48 tokens each")
    ap.add_argument("--reply", type=int, default=32, help="turn-1 reply tokens")
    args = ap.parse_args()

    from benchmarks._results import append_results
    from omax.engine.arch import fast_family
    from omax.engine.engine import Engine
    from omax.engine.loader import load_fast, load_model
    from tests.engine.conftest import SMOLLM2_GGUF, gguf_spec, gguf_tensors

    spec = gguf_spec(SMOLLM2_GGUF)
    tensors = gguf_tensors(SMOLLM2_GGUF)
    if args.quant != "none" and fast_family(spec.config):
        loaded = load_fast(spec, tensors, quant=args.quant)
    else:
        loaded = load_model(spec, tensors)
    results: dict[int, list[dict]] = {}
    for rows in (4, 0):
        for _ in range(args.repeat):
            eng = Engine(loaded, max_batch=4, max_ctx=2048, prefix_rows=rows)
            try:
                results.setdefault(rows, []).append(chat_turn2(eng, args.paragraphs, args.reply))
            finally:
                eng.close()

    def ms(rows: int) -> str:
        xs = [r["ttft_ms"] for r in results[rows]]
        return f"{min(xs):.0f} / {statistics.median(xs):.0f}"

    hit, cold = results[4][0], results[0][0]
    speedup = statistics.median(r["ttft_ms"] for r in results[0]) / statistics.median(
        r["ttft_ms"] for r in results[4]
    )
    append_results(
        f"Prefix reuse (SmolLM2 {args.quant}, turn 2 of a chat)",
        [
            ("turn-2 prompt tokens", str(hit["prompt"]), ""),
            ("prefilled tokens, reuse / none", f"{hit['prefilled']} / {cold['prefilled']}", ""),
            ("tokens copied from cache", str(hit["reused"]), ""),
            ("TTFT ms best / median, reuse", ms(4), ""),
            ("TTFT ms best / median, none", ms(0), ""),
            ("TTFT speedup (median)", f"{speedup:.1f}x", ""),
        ],
        "python benchmarks/prefix_bench.py " + " ".join(sys.argv[1:]),
    )


if __name__ == "__main__":
    main()

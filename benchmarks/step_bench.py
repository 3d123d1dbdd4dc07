"""The engine's step in this process, per GGUF: decode at 1 and 16 rows, and prefill.

Run: .venv/bin/python benchmarks/step_bench.py [GGUF ...] [--no-record]
(default: the Q4_K_M files benchmarks/make_models.py writes, and Gemma 3's Q8_0)

For each file, loaded as the server loads it (quant int4, bf16 activations, the
native step where it is built):

1. Decode: ``FastRunner.decode`` of 1 and of 16 rows (16 cache rows prefilled with
   100 tokens each), milliseconds a step: the minimum over 3 rounds of the median of
   40 steps. Kernel changes show here without HTTP or scheduling in the way.
2. Prefill: 16 prompts of ~100 tokens submitted at once, one token each, through the
   engine's batching loop (prompts join in chunks, as in a 16-stream benchmark);
   prompt tokens a second, the median of 5 rounds.

No target: http_bench.py holds omax to llama-server; this shows where a step's time
goes when that comparison moves.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from _results import append_results  # noqa: E402

DEFAULTS = (
    "smollm2-135m-Q4_K_M.gguf",
    "gemma3-270m-Q4_K_M.gguf",
    "qwen3-random-300m-Q4_K_M.gguf",
    "gemma3-270m-Q8_0.gguf",
)


def decode_ms(runner, rows: int, steps: int = 40) -> float:
    def median() -> float:
        times = []
        for i in range(steps):
            t0 = time.perf_counter()
            runner.decode([7 + j for j in range(rows)], [100 + i] * rows)
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3

    median()  # warm
    return min(median() for _ in range(3))


def prefill_tps(engine, rounds: int = 5) -> float:
    from omax.engine.request import GenerateRequest, SamplingOptions

    def prompt(i: int) -> str:
        return ", ".join(str(n) for n in range(1 + 10 * i, 51 + 10 * i)) + ","

    def one() -> float:
        opts = SamplingOptions(temperature=0.0, num_predict=1)
        reqs = [
            GenerateRequest(model="m", prompt=prompt(i), raw=True, options=opts) for i in range(16)
        ]
        t0 = time.perf_counter()
        pending, tokens = {engine.submit(r) for r in reqs}, 0
        while pending:
            for rid, chunks in engine.poll(list(pending), timeout=1.0).items():
                for c in chunks:
                    if c.done:
                        tokens += c.metrics.prompt_eval_count
                        pending.discard(rid)
        return tokens / (time.perf_counter() - t0)

    one()  # warm
    return statistics.median(one() for _ in range(rounds))


def main() -> None:
    ap = argparse.ArgumentParser()
    models = Path(os.environ.get("OMAX_BENCH_MODELS", "/tmp/omax-bench-models"))
    ap.add_argument(
        "ggufs", nargs="*", type=Path, help=f"GGUFs (default: {', '.join(DEFAULTS)} in {models})"
    )
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    ggufs = args.ggufs or [models / name for name in DEFAULTS]
    missing = [p for p in ggufs if not p.exists()]
    if missing:
        raise SystemExit(f"missing {missing}: run benchmarks/make_models.py first")

    from omax.engine import native
    from omax.engine.engine import Engine
    from omax.engine.runner import FastRunner
    from tests.engine.conftest import gguf_spec, gguf_tensors

    rows = [("native step", "on" if native.module() is not None else "off (Python)", "")]
    for path in ggufs:
        eng = Engine.load(
            gguf_spec(path), gguf_tensors(path), quant="int4", max_ctx=1024, max_batch=16
        )
        try:
            runner = FastRunner(eng.loaded.model, max_slots=16, max_len=1024)
            for slot in range(16):
                runner.prefill(list(range(100 + slot, 200 + slot)), 0, slot)
            one, many = decode_ms(runner, 1), decode_ms(runner, 16)
            del runner
            tps = prefill_tps(eng)
        finally:
            eng.close()
        rows += [
            (f"{path.name}: decode, 1 row (ms a step)", f"{one:.2f}", ""),
            (f"{path.name}: decode, 16 rows (ms a step)", f"{many:.2f}", ""),
            (f"{path.name}: prefill, 16 prompts (tok/s)", f"{tps:.0f}", ""),
        ]
    command = "python benchmarks/step_bench.py " + " ".join(str(p) for p in ggufs)
    if args.no_record:
        for measure, value, _ in rows:
            print(f"  {measure}: {value}")
        return
    append_results("step_bench: the engine's step in process", rows, command)


if __name__ == "__main__":
    main()

"""Engine benchmark: SmolLM2 decode (1 and 16 streams), cold load, load RSS, MiniLM embed.

    .venv/bin/python benchmarks/engine_bench.py [--dtype float32|bfloat16] [--quant none|int8]

Prints a table and appends it to benchmarks/RESULTS.md with machine, command and date.
Targets (issue 4): one stream >= 1.0x llama.cpp (~100 tok/s on 2 cores), 16 streams
>= 1.5x llama.cpp's ~170 tok/s, cold load <= 1.5 s, load peak <= 1.5x model size,
MiniLM >= 1.0x sentence-transformers encode.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from omax.engine.engine import Engine  # noqa: E402
from omax.engine.request import EmbedRequest, GenerateRequest, SamplingOptions  # noqa: E402
from tests.engine.conftest import (  # noqa: E402
    MINILM_DIR,
    SMOLLM2_GGUF,
    gguf_spec,
    gguf_tensors,
    hf_folder_spec,
    safetensors_raw,
)


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    def __enter__(self):
        self.peak, self.base, self._stop = rss(), rss(), False
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()
        return self

    def _watch(self):
        while not self._stop:
            self.peak = max(self.peak, rss())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()


def run(engine, reqs):
    ids = [engine.submit(r) for r in reqs]
    pending, tokens = set(ids), 0
    t0 = time.perf_counter()
    while pending:
        for rid, chunks in engine.poll(list(pending), timeout=1.0).items():
            for c in chunks:
                if c.done:
                    tokens += c.metrics.eval_count
                    pending.discard(rid)
    return tokens, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--quant", default="none")
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    opts = {"quant": args.quant} if args.quant != "none" else {}
    rows = []
    spec = gguf_spec(SMOLLM2_GGUF)
    raws = gguf_tensors(SMOLLM2_GGUF)
    Engine.load(spec, raws, dtype=args.dtype, **opts).close()  # warm imports
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        eng = Engine.load(spec, raws, dtype=args.dtype, max_ctx=2048, **opts)
        first = next(
            eng.generate(
                GenerateRequest(model="s", prompt="Hi", options=SamplingOptions(num_predict=1))
            )
        )
        cold = time.perf_counter() - t0
    del first
    model_bytes = eng.stats()["param_bytes"]
    rows.append(("cold load to first token (s)", f"{cold:.2f}", "<= 1.5"))
    rows.append(
        (
            "peak RSS growth during load / model size",
            f"{(mem.peak - mem.base) / model_bytes:.2f}",
            "<= 1.5",
        )
    )
    g = SamplingOptions(temperature=0.0, num_predict=args.tokens)
    run(eng, [GenerateRequest(model="s", prompt="Warm up", options=SamplingOptions(num_predict=8))])
    n, dt = run(eng, [GenerateRequest(model="s", prompt="Tell me about the sea.", options=g)])
    one = n / dt
    rows.append(("1 stream decode tok/s", f"{one:.1f}", ">= 100 (llama.cpp ~100)"))
    reqs = [
        GenerateRequest(model="s", prompt=f"Tell me about topic {i}.", options=g) for i in range(16)
    ]
    n, dt = run(eng, reqs)
    rows.append(("16 streams aggregate tok/s", f"{n / dt:.1f}", ">= 255 (1.5x llama.cpp ~170)"))
    eng.close()
    emb = Engine.load(hf_folder_spec(MINILM_DIR), safetensors_raw(MINILM_DIR))
    sents = tuple(f"This is short sentence number {i} about topic {i % 17}." for i in range(1000))
    emb.embed(EmbedRequest(model="m", inputs=sents[:64]))
    t0 = time.perf_counter()
    emb.embed(EmbedRequest(model="m", inputs=sents))
    rows.append(
        (
            "MiniLM 1,000 sentences / s",
            f"{1000 / (time.perf_counter() - t0):.0f}",
            ">= sentence-transformers encode (not measured here)",
        )
    )
    emb.close()

    cmd = "python benchmarks/engine_bench.py " + " ".join(sys.argv[1:])
    head = (
        f"\n## engine_bench {datetime.datetime.now().isoformat(timespec='seconds')}\n\n"
        f"- machine: {platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch threads {__import__('torch').get_num_threads()}\n"
        f"- command: `{cmd}`\n- SmolLM2-135M-Instruct Q4_1 -> {args.dtype}, quant={args.quant}\n\n"
    )
    table = "| metric | value | target |\n|---|---|---|\n" + "".join(
        f"| {a} | {b} | {c} |\n" for a, b, c in rows
    )
    print(head + table)
    with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
        f.write(head + table)


if __name__ == "__main__":
    main()

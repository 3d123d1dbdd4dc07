"""The native matmul kernels' rates against this CPU's ceiling, by row count.

Run: .venv/bin/python benchmarks/kernel_rates.py [--no-record]

For the Qwen3 shape's weights (hidden 1024, 16 heads of 128 over 8 KV heads, MLP 3072,
vocabulary 49152; benchmarks/make_models.py), as the fast path holds them from a
Q4_K_M file: the fused qkv, o, the fused gate/up, down and the head, each through
``omax.engine.linear.Lin`` as "int4" (4-bit codes, Q4_K's layers) and "int8" (its
Q6_K layers and head), at 1 row (one stream), 16 rows (16 streams decoding) and 190
rows (a prompt step), with enough copies of each weight in turn (64 MiB or more) that
they stream from memory as a model's layers do. Each reports G multiply-adds a second
on all cores and that as a share of the machine's bf16 ceiling: ``vdpbf16ps`` at its
measured rate (benchmarks/dot_rates.py) on every core, 32 products an instruction.

Why it matters: 16 streams are compute-bound, so their ceiling is this share. One
stream reads every weight once a token: its kernels are bound by memory, and their
share here is low by nature. Needs the native kernels (AVX512-BF16 and VBMI);
elsewhere it says so and exits. No target.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _results import append_results  # noqa: E402
from dot_rates import build, every_core  # noqa: E402

from omax.engine import native  # noqa: E402
from omax.engine.linear import Lin  # noqa: E402
from omax.engine.weights import CodeBlocks  # noqa: E402

SHAPES = {  # name: (out, in), the Qwen3 shape's
    "qkv": (4096, 1024),
    "o": (1024, 2048),
    "gate_up": (6144, 1024),
    "down": (1024, 3072),
    "head": (49152, 1024),
}
ROWS = (1, 16, 190)
COPIES_BYTES = 64 * 2**20  # more than this CPU's last-level cache


def weight(n: int, k: int, quant: str, seed: int) -> Lin:
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=gen)
    scale = torch.rand(n, k // 32, generator=gen) * 0.01
    blocks = CodeBlocks(codes, scale, -8 * scale)
    if quant == "int8":
        return Lin(blocks.dequantize(), "int8", torch.bfloat16)
    return Lin(blocks, "int4", torch.bfloat16)


def copies(n: int, k: int, quant: str) -> list[Lin]:
    """Distinct weights of one shape, at least ``COPIES_BYTES`` of them together."""
    first = weight(n, k, quant, 0)
    size = sum(t.numel() * t.element_size() for t in first.tensors())
    return [first] + [weight(n, k, quant, i) for i in range(1, -(-COPIES_BYTES // size))]


def seconds(lins: list[Lin], x: torch.Tensor) -> float:
    """Per call, the best of three timed passes over ``lins`` (~0.2 s or more each)."""
    for lin in lins:
        lin(x)
    passes = max(1, int(4e8 / (lins[0].n * lins[0].k * len(x) * len(lins))))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(passes):
            for lin in lins:
                lin(x)
        best = min(best, (time.perf_counter() - t0) / (passes * len(lins)))
    return best


def peak_gmacs() -> float:
    """bf16 multiply-adds a second on every core at once (dot_rates' loop)."""
    with tempfile.TemporaryDirectory() as tmp:
        every = every_core(build(Path(tmp)))
    return sum(r["vdpbf16ps-512"][0] * r["vdpbf16ps-512"][1] for r in every)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-record", action="store_true", help="print only")
    args = ap.parse_args()
    peak = peak_gmacs()  # first: the kernels' threads spin a while after their last call
    if not native.own_kernels():
        print("this CPU lacks the native kernels' instructions (AVX512-BF16, VBMI)")
        return
    torch.set_num_threads(os.cpu_count() or 1)
    rows = [
        ("bf16 ceiling, every core (G multiply-adds/s)", f"{peak:.0f}", ""),
        ("rows a call", " / ".join(map(str, ROWS)), ""),
    ]
    for quant in ("int4", "int8"):
        for name, (n, k) in SHAPES.items():
            lins = copies(n, k, quant)
            cells = []
            for r in ROWS:
                x = torch.randn(r, k, generator=torch.Generator().manual_seed(r)).bfloat16()
                rate = n * k * r / seconds(lins, x) / 1e9
                cells.append(f"{rate:.0f} ({rate / peak:.0%})")
            label = f"{quant} {name} [{n}, {k}]: G MAC/s (share of the ceiling)"
            rows.append((label, " / ".join(cells), ""))
    if args.no_record:
        for label, value, _ in rows:
            print(f"{label}: {value}")
        return
    append_results(
        "kernel_rates: the native matmul kernels against the bf16 ceiling",
        rows,
        "python benchmarks/kernel_rates.py",
    )


if __name__ == "__main__":
    main()

"""This CPU's dot-product instructions, their rate: what a matmul kernel can reach.

Run: .venv/bin/python benchmarks/dot_rates.py [--no-record]

Compiles a small C++ loop (``c++ -O2 -march=native``, as the native step is built)
that keeps 12 independent accumulators busy with one instruction at a time, and
times it on one core and on every core at once (a process each):

- ``vdpbf16ps`` (AVX512-BF16): 32 bf16 products an instruction, the native step's
  int4, dense and attention kernels;
- ``vpdpbusd`` (AVX512-VNNI), 512- and 256-bit: 64 and 32 int8 products, the int8
  kernel past four rows (two an instruction quad: 16-bit fixed point activations)
  and what llama.cpp's 8-bit activations run on;
- ``vpdpwssd``: 32 int16 products.

Products a second are the ceiling of a kernel built on each. On this AMD EPYC (Zen 4)
``vpdpbusd`` gives 2x the products of ``vdpbf16ps`` at either width: the int8 kernel's
16-bit activations (two instructions a quad) have the bf16 kernels' ceiling, and
8-bit activations (one) would double it, at their loss of accuracy.
No target: benchmarks/RESULTS.md keeps the numbers beside the kernels' own.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import append_results  # noqa: E402

SOURCE = r"""
#include <immintrin.h>
#include <chrono>
#include <cstdio>

// 12 independent sums (more than the instruction's latency times its rate), kept in
// registers; b changes opaquely every round, so nothing is hoisted out of the loop. (24
// sums, as an earlier version kept, halve vpdpbusd's rate on AMD's Zen 4 and not
// vdpbf16ps': that version's 0.55x for 16-bit activations was this loop's, not the CPU's.)
#define RATE(NAME, PRODUCTS, V, ZERO, B, OP)                                         \
  {                                                                                  \
    const long n = 20000000;                                                          \
    V acc[12];                                                                       \
    for (int i = 0; i < 12; ++i) acc[i] = ZERO;                                      \
    auto b = B;                                                                      \
    auto t0 = std::chrono::steady_clock::now();                                      \
    for (long r = 0; r < n; ++r) {                                                   \
      _Pragma("GCC unroll 12") for (int i = 0; i < 12; ++i) acc[i] = OP;             \
      asm volatile("" : "+v"(b));                                                    \
    }                                                                                \
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); \
    for (int i = 0; i < 12; ++i) asm volatile("" : : "v"(acc[i]));                   \
    printf("%s %d %.3f\n", NAME, PRODUCTS, n * 12 / s / 1e9);                        \
  }

int main() {
  const __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f803f80);
  const __m512i u = _mm512_set1_epi32(0x01010101);
  const __m256i u2 = _mm256_set1_epi32(0x01010101);
  RATE("vdpbf16ps-512", 32, __m512, _mm512_setzero_ps(), (__m512bh)_mm512_set1_epi32(0x3f813f81),
       _mm512_dpbf16_ps(acc[i], x, b))
  RATE("vpdpbusd-512", 64, __m512i, _mm512_setzero_si512(), _mm512_set1_epi32(0x02020202),
       _mm512_dpbusd_epi32(acc[i], u, b))
  RATE("vpdpbusd-256", 32, __m256i, _mm256_setzero_si256(), _mm256_set1_epi32(0x02020202),
       _mm256_dpbusd_epi32(acc[i], u2, b))
  RATE("vpdpwssd-512", 32, __m512i, _mm512_setzero_si512(), _mm512_set1_epi32(0x00020002),
       _mm512_dpwssd_epi32(acc[i], u, b))
}
"""


def build(work: Path) -> Path:
    src, exe = work / "dot_rates.cpp", work / "dot_rates"
    src.write_text(SOURCE)
    subprocess.run(["c++", "-O2", "-march=native", "-o", str(exe), str(src)], check=True)
    return exe


def measure(exe: Path) -> dict[str, tuple[int, float]]:
    """Instruction -> (products an instruction, billions of instructions a second)."""
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    rates = {}
    for line in out.splitlines():
        name, products, giga = line.split()
        rates[name] = (int(products), float(giga))
    return rates


def every_core(exe: Path) -> list[dict[str, tuple[int, float]]]:
    """``measure`` on every core at once, a process a core."""
    cores = os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(cores) as pool:
        return list(pool.map(lambda _: measure(exe), range(cores)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-record", action="store_true", help="print only")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(Path(tmp))
        one = measure(exe)
        every = every_core(exe)
    rows = []
    bf16 = one["vdpbf16ps-512"][0] * one["vdpbf16ps-512"][1]
    for name, (products, giga) in one.items():
        total = sum(r[name][1] for r in every)
        rows.append(
            (
                f"{name}: G instructions/s, one core / {cores} cores (products each)",
                f"{giga:.2f} / {total:.2f} ({products})",
                "",
            )
        )
        rows.append(
            (
                f"{name}: G products/s a core, against vdpbf16ps",
                f"{products * giga:.0f} ({products * giga / bf16:.2f}x)",
                "",
            )
        )
    if args.no_record:
        for measure_, value, _ in rows:
            print(f"{measure_}: {value}")
        return
    append_results(
        "dot_rates: this CPU's dot-product instructions", rows, "python benchmarks/dot_rates.py"
    )


if __name__ == "__main__":
    main()

"""Placement decision time among 1,000 simulated slots holding 500 loaded models.

Run: .venv/bin/python benchmarks/placement_bench.py
Target (issue 5): at most 5 ms per decision.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _results import append_results  # noqa: E402

from omax.plugins.placement import Need, place  # noqa: E402
from omax.plugins.state import Loaded, Replica, Slot, WorkerInfo  # noqa: E402

GiB = 2**30


def cluster(n_slots: int, n_models: int, seed: int = 0):
    rng = random.Random(seed)
    workers = []
    for i in range(n_slots // 4):  # 4 GPUs a worker
        slots = tuple(Slot(f"cuda:{g}", "cuda", "H100", 80 * GiB, 80 * GiB) for g in range(4))
        replicas = {f"m{k}": Replica(f"m{k}", True, 1, 1) for k in rng.sample(range(n_models), 5)}
        workers.append(
            WorkerInfo(f"tcp://10.0.{i // 250}.{i % 250}:8786", f"h{i}", slots, replicas)
        )
    loaded = []
    for j in range(n_models):
        w = rng.choice(workers)
        loaded.append(
            Loaded(
                f"k{j}",
                f"m{j}",
                f"m{j}",
                w.address,
                f"cuda:{rng.randrange(4)}",
                rng.choice([4, 16, 40]) * GiB,
                8192,
                rng.random() * 1e6,
                300.0,
                rng.randrange(3),
                True,
            )
        )
    return workers, loaded


def main() -> None:
    workers, loaded = cluster(1000, 500)
    times = []
    for k in range(200):
        need = Need(f"m{k % 500}", f"m{k % 500}", (k % 7 + 1) * 8 * GiB)
        t = time.perf_counter()
        place(workers, loaded, need)
        times.append((time.perf_counter() - t) * 1000)
    rows = [
        (
            "placement, 1000 slots / 500 models, median ms",
            f"{statistics.median(times):.2f}",
            "<= 5",
        ),
        ("placement, 1000 slots / 500 models, p99 ms", f"{sorted(times)[197]:.2f}", "<= 5"),
    ]
    append_results("Placement policy", rows, "python benchmarks/placement_bench.py")


if __name__ == "__main__":
    main()

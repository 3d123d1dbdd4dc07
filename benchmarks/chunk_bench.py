"""Chunk-size sweep for the model store: import and hash-verified zarr read-back
throughput (MB/s) of the bundled SmolLM2 GGUF and all-MiniLM-L6-v2 folder at each
chunk size, into a fresh local store per run. Medians over ``--reps`` interleaved runs.

    python benchmarks/chunk_bench.py [--sizes 1,4,16,64] [--reps 3]

GGUF metadata parsing (seconds, independent of chunking) is warmed up first so import
times measure the tensor path. Reads hit the page cache: this compares chunking cost
(per-blob overhead, hashing, zarr concurrency), not disk speed.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _results import append_results  # noqa: E402

from omax.sharding.bundled import minilm_folder_path, smollm2_gguf_path  # noqa: E402
from omax.sharding.importers import gguf as gguf_importer  # noqa: E402
from omax.sharding.modelstore import ModelStore  # noqa: E402
from omax.sharding.zarrstore import CHUNK_BYTES, read_tensor, read_tensors  # noqa: E402


def source_bytes(source: Path) -> int:
    paths = [source] if source.is_file() else sorted(source.glob("*.safetensors"))
    return sum(p.stat().st_size for p in paths)


def run_once(tmp: str, source: Path, chunk_mib: int) -> tuple[float, float, float, float, int]:
    """(import MB/s, tensor write MB/s, zarr read MB/s, largest-tensor read MB/s, chunk
    blobs) for one import into a fresh store. The largest tensor (the embedding) is the
    one whose chunk count the size changes most, and zarr reads its chunks concurrently. Tensor writes are timed between the importer's "importing tensors"
    and "writing manifest" stages, leaving out file parsing."""
    root = tempfile.mkdtemp(dir=tmp)
    stages: dict[str, float] = {}

    def progress(status: str, done: int, total: int) -> None:
        stages.setdefault(status, time.perf_counter())

    try:
        store = ModelStore(root, chunk_bytes=chunk_mib << 20)
        report = store.import_path(source, "m", progress=progress)
        t_write = stages["writing manifest"] - stages["importing tensors"]
        reader = ModelStore(root)  # no cached manifest: as a loading worker sees it
        _, m = reader.resolve("m")
        t = time.perf_counter()
        got = sum(x.data.nbytes for x in read_tensors(reader.blobs, m))
        t_read = time.perf_counter() - t
        chunks = sum(len(e.chunks) for e in m.tensors)
        big = max(m.tensors, key=lambda e: e.nbytes)
        t = time.perf_counter()
        read_tensor(reader.blobs, m, big.name)
        t_big = time.perf_counter() - t
        mb = source_bytes(source) / 1e6
        return (
            mb / report.seconds,
            m.total_size / 1e6 / t_write,
            got / 1e6 / t_read,
            big.nbytes / 1e6 / t_big,
            chunks,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,4,16,64", help="chunk sizes in MiB")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-record", action="store_true", help="print only")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    models = {
        "SmolLM2 Q4_1 gguf": smollm2_gguf_path(),
        "MiniLM F32 safetensors": minilm_folder_path(),
    }
    gguf_path = smollm2_gguf_path()
    gguf_importer._derived_metadata(gguf_path, gguf_importer._file_key(gguf_path))
    runs: dict[tuple[str, int], list[tuple[float, float, float, float, int]]] = {}
    tmp = tempfile.mkdtemp(prefix="omax-chunk-bench-")
    try:
        for _ in range(args.reps):
            for label, source in models.items():
                for mib in sizes:
                    runs.setdefault((label, mib), []).append(run_once(tmp, source, mib))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows: list[tuple[str, str, str]] = []
    for label in models:
        for mib in sizes:
            r = runs[(label, mib)]
            imp, write, read, big = (statistics.median(x[i] for x in r) for i in range(4))
            current = ", current" if mib << 20 == CHUNK_BYTES else ""
            rows.append(
                (
                    f"{label} @ {mib} MiB ({r[0][4]} chunks{current}): import /"
                    " tensor write / zarr read all / zarr read largest tensor MB/s",
                    f"{imp:.0f} / {write:.0f} / {read:.0f} / {big:.0f}",
                    "highest",
                )
            )
    title = f"chunk_bench (median of {args.reps}, local disk, hash-verified reads)"
    if args.no_record:
        for measure, value, _ in rows:
            print(f"{measure}: {value}")
        return
    append_results(title, rows, " ".join(["python", *sys.argv]))


if __name__ == "__main__":
    main()

"""Model store throughput: import and zarr read-back (MB/s) beside a plain file read,
for the bundled SmolLM2 GGUF and all-MiniLM-L6-v2 folder, plus zstd ratios per dtype.

    python benchmarks/store_bench.py [--out benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import gguf
import numpy as np
from numcodecs import Zstd

from omax.sharding.bundled import minilm_folder_path, smollm2_gguf_path
from omax.sharding.modelstore import ModelStore
from omax.sharding.zarrstore import CHUNK_BYTES, read_tensors


def machine() -> str:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        ram = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    except OSError:
        ram = 0.0
    return f"nproc={os.cpu_count()}, RAM={ram:.0f} GiB, CPU={cpu}"


def plain_read(paths: list[Path]) -> tuple[int, float]:
    t = time.perf_counter()
    n = 0
    for p in paths:
        with open(p, "rb") as f:
            while block := f.read(8 << 20):
                n += len(block)
    return n, time.perf_counter() - t


def bench_model(root: str, source: Path, name: str) -> dict[str, float]:
    paths = [source] if source.is_file() else sorted(source.glob("*.safetensors"))
    nbytes, t_plain = plain_read(paths)
    store = ModelStore(root)
    report = store.import_path(source, name)
    _, m = store.resolve(name)
    t = time.perf_counter()
    got = sum(t.data.nbytes for t in read_tensors(store.blobs, m))
    t_read = time.perf_counter() - t
    mb = nbytes / 1e6
    return {
        "MB": mb,
        "plain read MB/s": mb / t_plain,
        "import MB/s": mb / report.seconds,
        "zarr read MB/s": got / 1e6 / t_read,
    }


def compression_table() -> list[tuple[str, float, float, float]]:
    """(dtype, zstd-1 ratio, compress MB/s, decompress MB/s) on real weights."""
    samples: dict[str, np.ndarray] = {}
    reader = gguf.GGUFReader(smollm2_gguf_path())
    quant = [t for t in reader.tensors if t.tensor_type.name == "Q4_1"]
    samples["Q4_1 blocks (uint8)"] = np.concatenate(
        [np.asarray(t.data).ravel() for t in quant[:20]]
    )
    from safetensors.numpy import load_file

    st = load_file(str(minilm_folder_path() / "model.safetensors"))
    f32 = np.concatenate([a.ravel() for a in st.values() if a.dtype == np.float32])
    samples["float32"] = f32
    samples["float16"] = f32.astype(np.float16)
    samples["bfloat16 (uint16 view)"] = (f32.view(np.uint32) >> 16).astype(np.uint16)
    rows = []
    z = Zstd(level=1)
    for label, arr in samples.items():
        raw = arr.tobytes()
        t = time.perf_counter()
        enc = z.encode(raw)
        tc = time.perf_counter() - t
        t = time.perf_counter()
        z.decode(enc)
        td = time.perf_counter() - t
        rows.append((label, len(enc) / len(raw), len(raw) / 1e6 / tc, len(raw) / 1e6 / td))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).parent / "RESULTS.md"))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="omax-bench-")
    try:
        results = {
            "SmolLM2-135M Q4_1 (gguf)": bench_model(f"{tmp}/a", smollm2_gguf_path(), "smol"),
            "all-MiniLM-L6-v2 F32 (safetensors)": bench_model(
                f"{tmp}/b", minilm_folder_path(), "mini"
            ),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    comp = compression_table()
    cols = ["MB", "plain read MB/s", "import MB/s", "zarr read MB/s"]
    lines = [
        f"\n## store_bench {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC\n",
        f"- machine: {machine()}",
        f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        f"- local-disk store, hash-verified zarr reads, {CHUNK_BYTES >> 20} MiB chunks\n",
        "| model | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for model, r in results.items():
        lines.append(f"| {model} | " + " | ".join(f"{r[c]:.0f}" for c in cols) + " |")
    lines += [
        "",
        "| stored dtype | zstd-1 size ratio | compress MB/s | decompress MB/s |",
        "|---|---|---|---|",
    ]
    lines += [f"| {d} | {r:.3f} | {c:.0f} | {x:.0f} |" for d, r, c, x in comp]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()

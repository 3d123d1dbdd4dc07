#!/usr/bin/env bash
# omax on a CUDA GPU, checked and measured against llama.cpp built for the same GPU, in
# one run (benchmarks/gpu_bench.py says what is measured). For a lent GPU machine whose
# Python has torch and transformers but not omax's other packages:
#
#     bash benchmarks/gpu_bench.sh [WAIT_S]        # PYTHON=.venv/bin/python: make bench
#
# On a lent machine it wants beside the repository (both ignored by git):
# - .whl/: wheels of the packages that machine lacks (dask, zarr, gguf, numcodecs,
#   transformers, ...), installed with --no-deps into /tmp/site;
# - .gpu/llama_cpp_python-0.3.36.tar.gz: llama-cpp-python's sdist with the parts no
#   build here reads (docs, models, tests, other GPU backends) left out (64 MiB travel).
# Without them it uses $PYTHON's packages and the sdist `make install` downloads.
#
# The steps run in a session of their own, so they outlive this command: it waits up to
# WAIT_S seconds (default 540), copies what is done to $OUT, and a second call waits for
# the same run. Steps, with the llama.cpp CUDA build running beside the first three:
#   1. pytest tests/engine/test_packed.py and test_cuda_graphs.py (the CUDA int4/int8
#      kernels, captured decode steps);
#   2. gpu_bench.py models (random models at real shapes, F16 GGUFs);
#   3. OMAX_TEST_DEVICE=cuda pytest tests/engine/test_families.py (every fast-path
#      family on CUDA against transformers);
#   4. gpu_bench.py quantize, then bench.
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
W="${GPU_BENCH_DIR:-/tmp/gpu-bench}"
OUT="${OUT:-$W/out}"

PY="${PYTHON:-python3}"

pipeline() {
  cd "$ROOT" || exit 1
  export PYTHONPATH="$ROOT" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
  local sdist="$ROOT/.venv/share/llama-cpp-src"
  if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || echo "pip install failed"
    export PYTHONPATH="/tmp/site:$ROOT"
  fi
  if [ -d .gpu ]; then
    sdist="$ROOT/.gpu"
    export OMAX_LLAMA_CPP_SRC="$sdist"
  fi
  command -v nvcc >/dev/null || export PATH="/usr/local/cuda/bin:$PATH"
  nvidia-smi >"$W/nvidia-smi.txt" 2>&1
  "$PY" -c "import torch, transformers; print(torch.__version__, transformers.__version__)" \
    >"$W/versions.txt" 2>&1
  (
    CUDA_ARCH="${CUDA_ARCH:-90}" BUILD=cuda TARGETS="llama-quantize llama-batched-bench" \
      SDIST_DIR="$sdist" JOBS="${JOBS:-12}" bash benchmarks/build_llamacpp.sh
    echo "rc=$?"
  ) >"$W/build.log" 2>&1 &
  local build=$!
  timeout 180 "$PY" -m pytest -q -p no:cacheprovider tests/engine/test_packed.py \
    tests/engine/test_cuda_graphs.py >"$W/pytest-packed.log" 2>&1
  "$PY" benchmarks/gpu_bench.py models "$W/models" >"$W/models.log" 2>&1
  timeout 150 env OMAX_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider \
    tests/engine/test_families.py -k "greedy_equals or int4_points or original_models" \
    >"$W/pytest-families.log" 2>&1
  wait "$build"
  local bin="$ROOT/benchmarks/.llamacpp/bin-cuda"
  "$PY" benchmarks/gpu_bench.py quantize "$W/models" "$bin" >"$W/quantize.log" 2>&1
  "$PY" benchmarks/gpu_bench.py bench "$W/models" "$bin" --json "$W/bench.json" \
    >"$W/bench.md" 2>"$W/bench.log"
  touch "$W/done"
}

if [ "${1:-}" = --pipeline ]; then
  pipeline
  exit 0
fi

WAIT="${1:-540}"
mkdir -p "$W" "$OUT"
if [ ! -f "$W/started" ]; then
  touch "$W/started"
  setsid nohup bash "$0" --pipeline >"$W/pipeline.log" 2>&1 </dev/null &
fi
t0=$(date +%s)
while [ ! -f "$W/done" ] && [ $(($(date +%s) - t0)) -lt "$WAIT" ]; do sleep 5; done
# what is done so far (at most 8 files come back from a lent machine)
tail -c 400000 "$W/bench.log" >"$W/bench.log.tail" 2>/dev/null
for f in versions.txt nvidia-smi.txt; do cat "$W/$f" 2>/dev/null; done >"$OUT/env.txt"
for f in pytest-packed.log pytest-families.log; do
  echo "== $f"; tail -c 60000 "$W/$f" 2>/dev/null
done >"$OUT/checks.txt"
for f in models.log quantize.log build.log pipeline.log; do
  echo "== $f"; tail -c 30000 "$W/$f" 2>/dev/null
done >"$OUT/steps.txt"
cp "$W/bench.md" "$W/bench.json" "$OUT/" 2>/dev/null
cp "$W/bench.log.tail" "$OUT/bench.log" 2>/dev/null
[ -f "$W/done" ] && echo "gpu_bench: done" || echo "gpu_bench: still running after ${WAIT}s"
tail -n 40 "$W/bench.md" 2>/dev/null
grep -E "passed|failed|error" "$OUT/checks.txt" | tail -n 12

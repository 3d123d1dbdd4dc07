#!/usr/bin/env bash
# Build the benchmark's own environment: llama-cpp-python (compiled from source with the
# machine's gcc/cmake, several minutes) and sentence-transformers, kept apart from omax's
# venv so neither becomes an omax dependency. CPU-only torch matches omax's pin.
#
#     bash benchmarks/setup_llamacpp.sh        # creates benchmarks/.venv-llamacpp
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="${VENV:-$HERE/.venv-llamacpp}"
PY="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
echo '*' >"$VENV/.gitignore"
"$VENV/bin/pip" install -q --upgrade pip
# ggml built for this CPU's vector units (AVX-512 where /proc/cpuinfo lists it), AMX
# off: benchmarks/llamacpp_flags.sh, the same flags as benchmarks/build_llamacpp.sh.
CMAKE_ARGS="${CMAKE_ARGS:-$(bash "$HERE/llamacpp_flags.sh")}" \
  "$VENV/bin/pip" install -q --force-reinstall --no-cache-dir llama-cpp-python
# The CPU torch wheel omax pins (found through pip's find-links), not PyPI's CUDA build.
"$VENV/bin/pip" install -q "torch==$("$HERE/../.venv/bin/python" -c 'import torch; print(torch.__version__)')"
"$VENV/bin/pip" install -q sentence-transformers
"$VENV/bin/python" -c "import llama_cpp, sentence_transformers; print('llama_cpp', llama_cpp.__version__, 'sentence_transformers', sentence_transformers.__version__)"

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
# A native build (-march=native) faults with SIGILL at the first generate on this VM: it
# advertises AMX/AVX-512 features that trap. Pin a portable AVX2/FMA/F16C build instead.
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF}" \
  "$VENV/bin/pip" install -q --force-reinstall --no-cache-dir llama-cpp-python
# The CPU torch wheel omax pins (found through pip's find-links), not PyPI's CUDA build.
"$VENV/bin/pip" install -q "torch==$("$HERE/../.venv/bin/python" -c 'import torch; print(torch.__version__)')"
"$VENV/bin/pip" install -q sentence-transformers
"$VENV/bin/python" -c "import llama_cpp, sentence_transformers; print('llama_cpp', llama_cpp.__version__, 'sentence_transformers', sentence_transformers.__version__)"

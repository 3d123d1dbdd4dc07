#!/usr/bin/env bash
# Build llama.cpp's own programs (llama-server, llama-quantize, llama-bench, llama-cli)
# from the sources vendored in llama-cpp-python 0.3.36's source distribution, compiled
# for this CPU (benchmarks/llamacpp_flags.sh): AVX2/FMA/F16C plus whichever AVX-512
# parts /proc/cpuinfo lists (F+CD+VL+DQ+BW as one switch, VBMI, VNNI, BF16); AMX off.
# The reference that benchmarks/http_bench.py measures omax against.
#
#     bash benchmarks/build_llamacpp.sh            # -> benchmarks/.llamacpp/bin/llama-*
#     AVX512=OFF BUILD=avx2 bash benchmarks/build_llamacpp.sh   # AVX2-only build, to compare
#     CUDA_ARCH=90 BUILD=cuda bash benchmarks/build_llamacpp.sh  # + CUDA for sm_90 (gpu_bench.sh)
#
# About 20 minutes on 2 cores; re-running only re-checks (delete benchmarks/.llamacpp to redo).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$HERE/.."
OUT="$HERE/.llamacpp"
BUILD="${BUILD:-native}"            # build folder name under $OUT
VERSION=0.3.36
SDIST_DIR="${SDIST_DIR:-$ROOT/.venv/share/llama-cpp-src}"
SDIST="$SDIST_DIR/llama_cpp_python-$VERSION.tar.gz"
JOBS="${JOBS:-$(nproc)}"
TARGETS=(${TARGETS:-llama-server llama-quantize llama-bench llama-cli})

mkdir -p "$OUT"
echo '*' >"$OUT/.gitignore"

if [ ! -f "$SDIST" ]; then
  PIP="$ROOT/.venv/bin/pip"
  [ -x "$PIP" ] || PIP="python3 -m pip"
  $PIP download --quiet --no-deps --no-binary :all: -d "$SDIST_DIR" "llama-cpp-python==$VERSION"
fi
SRC="$OUT/src/llama_cpp_python-$VERSION/vendor/llama.cpp"
if [ ! -f "$SRC/CMakeLists.txt" ]; then
  mkdir -p "$OUT/src"
  tar xzf "$SDIST" -C "$OUT/src"
fi

# shellcheck disable=SC2207
GGML=($(bash "$HERE/llamacpp_flags.sh"))   # this CPU's vector units; AMX off
FLAGS=(
  -DCMAKE_BUILD_TYPE=Release
  -DBUILD_SHARED_LIBS=OFF
  "${GGML[@]}"
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF
)
# the server (and its web UI's sources, which gpu_bench.sh's trimmed sdist leaves out)
[[ " ${TARGETS[*]} " == *" llama-server "* ]] || FLAGS+=(-DLLAMA_BUILD_SERVER=OFF)
if [ -n "${CUDA_ARCH:-}" ]; then  # the GPU's compute capability, e.g. 90 for Hopper
  FLAGS+=(-DGGML_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCH")
fi
echo "llama.cpp $VERSION (vendored) cmake flags: ${FLAGS[*]}" | tee "$OUT/$BUILD.flags"
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
cmake -S "$SRC" -B "$OUT/build-$BUILD" "${GEN[@]}" "${FLAGS[@]}" >"$OUT/$BUILD.configure.log"
cmake --build "$OUT/build-$BUILD" -j "$JOBS" --target "${TARGETS[@]}"
BIN="$OUT/bin"
[ "$BUILD" = native ] || BIN="$OUT/bin-$BUILD"
mkdir -p "$BIN"
for t in "${TARGETS[@]}"; do cp -f "$OUT/build-$BUILD/bin/$t" "$BIN/"; done
echo "built: $BIN/{$(IFS=,; echo "${TARGETS[*]}")}"

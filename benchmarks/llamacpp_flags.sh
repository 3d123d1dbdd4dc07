#!/usr/bin/env bash
# Prints the ggml cmake flags for this CPU, one line: AVX/AVX2/FMA/F16C/BMI2, AVX-VNNI
# and AVX-512 (F+CD+VL+DQ+BW as one switch, then VBMI, VNNI, BF16) as /proc/cpuinfo
# lists them, AMX always off (code built for it faults where the kernel has not enabled
# it; no VM of this kind lists it). GGML_NATIVE off: -march=native is not needed.
# AVX512=OFF in the environment gives an AVX2-only build. Used by build_llamacpp.sh
# and setup_llamacpp.sh.
set -euo pipefail
has() { grep -qw "$1" /proc/cpuinfo && echo ON || echo OFF; }
A512=OFF VBMI=OFF VNNI=OFF BF16=OFF
if [ "${AVX512:-}" != OFF ]; then
  if [ "$(has avx512f)" = ON ] && [ "$(has avx512bw)" = ON ] && [ "$(has avx512vl)" = ON ] &&
     [ "$(has avx512dq)" = ON ] && [ "$(has avx512cd)" = ON ]; then
    A512=ON VBMI=$(has avx512vbmi) VNNI=$(has avx512_vnni) BF16=$(has avx512_bf16)
  fi
fi
echo "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
  "-DGGML_BMI2=ON -DGGML_AVX_VNNI=$(has avx_vnni) -DGGML_AVX512=$A512" \
  "-DGGML_AVX512_VBMI=$VBMI -DGGML_AVX512_VNNI=$VNNI -DGGML_AVX512_BF16=$BF16" \
  "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"

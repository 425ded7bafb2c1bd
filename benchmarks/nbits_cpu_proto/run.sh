#!/usr/bin/env bash
# Builds breakdown.cc with the flags of the library's AVX-512 kernels and runs it:
#   benchmarks/nbits_cpu_proto/run.sh K N [--blocky]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="$here/../../custom_ops/src"
out="${TMPDIR:-/tmp}/wina_nbits_breakdown"
g++ -O3 -std=c++17 -fno-trapping-math -Wall -Wextra -Wno-maybe-uninitialized -Wno-unused-function \
  -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c -mprefer-vector-width=512 \
  -I"$src" "$here/breakdown.cc" -o "$out"
"$out" "$@"

#!/usr/bin/env bash
# compute-sanitizer over the CUDA kernels of WinaSparseMatMul, on a machine with an NVIDIA
# GPU, onnxruntime-gpu importable, and WINA_ONNX_LIBRARY pointing at a library built with
# -DWINA_ONNX_CUDA=ON (add -DWINA_ONNX_CUDA_LINEINFO=ON for source lines in reports).
#
#   scripts/cuda_sanitize.sh OUT_DIR [SHARDS] [LAUNCHER_BENCH]
#
# Every CUDA case (marker gpu) of tests/test_op_sparse_matmul.py runs under each tool, the
# cases split into SHARDS (default 6) processes per tool, all side by side (the sanitizers
# are CPU-bound):
#   memcheck   every kernel, cuBLAS's included: a bad pointer or leading dimension that the
#              op hands to cuBLAS in prefill shows up inside cuBLAS's kernels
#   racecheck  every kernel (limiting it to the op's kernels with --kernel-name made the
#              sanitizer fail with an internal error at the first cuBLAS call, compute-sanitizer
#              2025.3.1 on an H200); the summary counts the hazards reported in the op's
#              kernels (names containing "wina") apart from those in other kernels (cuBLAS's)
#   synccheck  the op's own kernels
# plus, when LAUNCHER_BENCH (the wina_cuda_launcher_bench tool of the CMake build) is given,
# its quick check (every dtype, decode and prefill, against a host reference) under each
# tool. Each process runs under `timeout ${SANITIZE_TIMEOUT:-500}`; its log (pytest -v
# lines and the tool's report) is OUT_DIR/<tool>-<shard>.log, and OUT_DIR/summary.txt
# lists, per process, the tests passed, the tool's ERROR SUMMARY (or that it was stopped
# before printing one) and the exit status. Exit status 0 only if every process finished
# with all tests passed and no error in the op's kernels. TOOLS (default "memcheck racecheck
# synccheck") picks tools; CUDA_TESTS names another op test file.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: scripts/cuda_sanitize.sh OUT_DIR [SHARDS] [LAUNCHER_BENCH]}"
SHARDS="${2:-6}"
BENCH="${3:-}"
LIMIT="${SANITIZE_TIMEOUT:-500}"
PY="${PYTHON:-python3}"
SAN="${COMPUTE_SANITIZER:-compute-sanitizer}"
mkdir -p "$OUT"
: "${WINA_ONNX_LIBRARY:?set WINA_ONNX_LIBRARY to the CUDA build of the op library}"
command -v "$SAN" > /dev/null || { echo "cuda_sanitize: $SAN not found" >&2; exit 2; }

# -P: the package comes from PYTHONPATH, not from the working directory.
mapfile -t TESTS < <("$PY" -P -m pytest --collect-only -q -p no:cacheprovider -m gpu "${CUDA_TESTS:-tests/test_op_sparse_matmul.py}" | grep '::')
[ "${#TESTS[@]}" -gt 0 ] || { echo "cuda_sanitize: no CUDA tests collected (is onnxruntime-gpu importable?)" >&2; exit 2; }
echo "cuda_sanitize: ${#TESTS[@]} tests x tools ${TOOLS:-memcheck racecheck synccheck}, $SHARDS shards each, limit ${LIMIT}s a process" | tee "$OUT/summary.txt"

tool_args() {
  case "$1" in
    memcheck) echo "--tool memcheck" ;;
    racecheck) echo "--tool racecheck" ;;
    synccheck) echo "--tool synccheck --kernel-name kns=wina" ;;
  esac
}

pids=()
for tool in ${TOOLS:-memcheck racecheck synccheck}; do
  for ((s = 0; s < SHARDS; s++)); do
    shard=()
    for ((i = s; i < ${#TESTS[@]}; i += SHARDS)); do shard+=("${TESTS[$i]}"); done
    log="$OUT/$tool-$s.log"
    # shellcheck disable=SC2046
    ( start=$SECONDS
      timeout "$LIMIT" "$SAN" $(tool_args "$tool") --error-exitcode 99 \
        "$PY" -P -m pytest -v -p no:cacheprovider "${shard[@]}" > "$log" 2>&1
      printf "\nexit status %s after %s s\n" "$?" "$((SECONDS - start))" >> "$log" ) &
    pids+=($!)
  done
  if [ -n "$BENCH" ]; then
    log="$OUT/$tool-launcher.log"
    # shellcheck disable=SC2046
    ( start=$SECONDS
      timeout "$LIMIT" "$SAN" $(tool_args "$tool") --error-exitcode 99 "$BENCH" check quick > "$log" 2>&1
      printf "\nexit status %s after %s s\n" "$?" "$((SECONDS - start))" >> "$log" ) &
    pids+=($!)
  fi
done
wait "${pids[@]}"

status=0
for log in "$OUT"/*.log; do
  name="$(basename "$log" .log)"
  passed="$(grep -c '::.* PASSED' "$log")"
  # pytest's last line ("== 13 passed in 80.1s =="), or the launcher's "check: N cases, F failed".
  result="$(grep -E '^(=+ .* in [0-9.]+s|check: )' "$log" | tail -n 1 | tr -d '=' | sed 's/^ *//; s/ *$//')"
  summary="$(grep -m1 -E '(ERROR|RACECHECK) SUMMARY' "$log" || echo 'no SUMMARY (stopped before the tool printed one)')"
  ended="$(tail -n 1 "$log")"
  # Where the reported errors are: "Race reported between ... at <kernel>+0x..", "... at <kernel>+0x..".
  ours="$(grep -E '^========= +(Error|Invalid|Barrier|Race)' "$log" | grep -c 'wina' || true)"
  others="$(grep -E '^========= +Error: Race reported' "$log" | grep -v 'wina' | grep -oE 'at [A-Za-z_][A-Za-z0-9_]*' | sort -u | sed 's/^at //' | tr '\n' ' ')"
  note=""
  [ -n "$others" ] && note="; races reported in other kernels only: $others"
  echo "$name: ${result:-stopped after $passed tests passed}; ${summary#========= }; $ended; errors in the op's kernels: $ours$note" | tee -a "$OUT/summary.txt"
  case "$summary" in
    *"ERROR SUMMARY: 0 errors"* | *"RACECHECK SUMMARY: 0 hazards"*) ;;
    *"RACECHECK SUMMARY"*) [ -n "$others" ] && [ "$ours" = 0 ] || status=1 ;;
    *) status=1 ;;
  esac
  case "$result" in
    "check: "*", 0 failed") ;;  # the launcher check's line names its failures, here none
    *failed* | *error* | "") status=1 ;;
  esac
  [ "$ours" = 0 ] || status=1
done
echo "cuda_sanitize: exit status $status" | tee -a "$OUT/summary.txt"
exit "$status"

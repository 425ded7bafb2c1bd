#!/usr/bin/env bash
# Build the op library with AddressSanitizer + UndefinedBehaviorSanitizer and run the op
# tests against it (CI runs this after the test suite). Any sanitizer report aborts the
# test process, so the run fails. Extra arguments go to pytest.
#
# The instrumented library is loaded through WINA_ONNX_LIBRARY; the sanitizer runtimes
# are preloaded into Python (which is not instrumented). ONNX Runtime's CPU memory
# arena is turned off (WINA_ONNX_TEST_NO_ARENA) so that every tensor is its own heap
# block and a read past one is caught. Leak checking is off: CPython keeps objects
# alive until exit by design.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
BUILD="$ROOT/build/sanitize"
PY="${PYTHON:-$ROOT/.venv/bin/python}"

ARGS=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DWINA_ONNX_SANITIZE=ON -DWINA_ONNX_CUDA=OFF)
if [ -z "${ORT_INCLUDE_DIR:-}" ]; then
  # Reuse the headers the package build fetched, if any (else CMake fetches them).
  header="$(find "$ROOT/build" -path '*onnxruntime-headers*' -name onnxruntime_cxx_api.h 2>/dev/null | head -n 1 || true)"
  [ -n "$header" ] && ARGS+=("-DORT_INCLUDE_DIR=$(dirname "$header")")
fi
cmake -S custom_ops -B "$BUILD" "${ARGS[@]}" > "$BUILD.log" 2>&1 || { cat "$BUILD.log"; exit 1; }
cmake --build "$BUILD" -j "$(nproc)" >> "$BUILD.log" 2>&1 || { cat "$BUILD.log"; exit 1; }
LIB="$BUILD/libwina_onnx_ops.so"
# grep without -q reads all of nm's output: with -q, nm can die of SIGPIPE and pipefail fails the check.
nm -D "$LIB" | grep __asan_init > /dev/null || { echo "sanitize: $LIB is not instrumented" >&2; exit 1; }

export WINA_ONNX_LIBRARY="$LIB"
export WINA_ONNX_TEST_NO_ARENA=1
export LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
# Reports go to files: pytest's output capture would swallow them when the process aborts.
REPORTS="$BUILD/reports"
rm -rf "$REPORTS" && mkdir -p "$REPORTS"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1:log_path=$REPORTS/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$REPORTS/ubsan"
export HF_HUB_OFFLINE=1
export WINA_ONNX_SANITIZED=1
# From / would miss tests/; pytest (not python -m pytest) imports the installed package.
status=0
"$(dirname "$PY")/pytest" -p no:cacheprovider -q -ra -m "not gpu" \
  tests/test_op_sparse_matmul.py tests/test_op_properties.py tests/test_op_nbits.py tests/test_op_concurrency.py \
  tests/test_sanitize_canary.py \
  "$@" || status=$?
if compgen -G "$REPORTS/*" > /dev/null; then
  cat "$REPORTS"/* >&2
  echo "sanitize: the sanitizers reported errors (above)" >&2
  exit 1
fi
[ "$status" -eq 0 ] && echo "sanitize: ASan + UBSan: no reports"
exit "$status"

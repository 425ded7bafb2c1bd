#!/usr/bin/env bash
# Packaging check (CI runs it after the tests): build the wheel, install it into a fresh
# virtual environment with onnxruntime from PyPI, and run scripts/wheel_smoke.py from a
# folder outside the source tree. The build compiles the CUDA kernels when nvcc exists.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$PYTHON" -m pip wheel -q --no-deps -w "$WORK/wheels" .
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q "$WORK"/wheels/wina_onnx-*.whl "onnxruntime>=1.20"
cd "$WORK"
"$WORK/venv/bin/python" "$ROOT/scripts/wheel_smoke.py"
"$WORK/venv/bin/wina-onnx" --version

#!/usr/bin/env bash
# Quick start, part 1: set up, then run the whole pipeline on the embedded SmolLM2-135M.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
wina-onnx demo --work-dir .cache/demo "$@"

#!/usr/bin/env bash
# Quick start, part 2: set up, then run the test suite (CI runs exactly this).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# `pytest`, not `python -m pytest`: the latter puts the repo root on sys.path, and the
# tests must import the installed package (with its op library and wina_onnx.passes).
HF_HUB_OFFLINE=1 pytest -p no:cacheprovider -ra "$@"

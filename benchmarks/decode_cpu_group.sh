#!/usr/bin/env bash
# Decode and prefill latency of SmolLM2-135M (fp32, KV cache) on the CPU: the dense model,
# WINA at 50% with threshold gating, and the same model with --group (q/k/v and gate/up as
# WinaSparseMatMulGroup nodes), interleaved in one `wina-onnx bench` run. Both WINA models
# use the same calibration and no refinement, so their thresholds are identical.
#
#   bash benchmarks/decode_cpu_group.sh [WORK_DIR] > benchmarks/results/decode_cpu_group.txt
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
for group in "" "--group"; do
  out="$work/decode-group/wina-0.5-threshold${group:+-grouped}/model.onnx"
  wina-onnx optimize "$dense" -o "$out" --sparsity 0.5 --gating threshold --allocate uniform \
    --calibration "$work/calib.npz" --refine-rounds 0 $group --force >/dev/null
  models+=("$out")
done
echo "# command: bash benchmarks/decode_cpu_group.sh $work"
echo "# date: $(date -u +%Y-%m-%d), $(nproc) cores, $(python -c 'import onnxruntime as o; print("onnxruntime", o.__version__)')"
echo "# models: ${models[*]}"
wina-onnx bench "${models[@]}" --prompt-tokens 128 --decode-tokens 64 --repeats 7 --threads "$(nproc)"

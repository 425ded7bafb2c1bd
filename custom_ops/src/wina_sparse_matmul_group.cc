#include "wina_sparse_matmul_group.h"

#include <string>

#include "sparse_kernel.h"

namespace wina {

namespace {

std::string label(size_t index, int64_t count) {
  if (index == kGroupInputX) return "input 'X' (index 0)";
  if (index == kGroupInputScoreScale) return "input 'score_scale' (index 1)";
  if (index == kGroupInputThreshold) return "input 'threshold' (index 2)";
  const int64_t j = static_cast<int64_t>(index - kGroupFirstWeight);
  const std::string what = j < count ? "B_" + std::to_string(j) : "bias_" + std::to_string(j - count);
  return "input '" + what + "' (index " + std::to_string(index) + ")";
}

}  // namespace

GroupInputs read_group_inputs(Ort::KernelContext& ctx, ONNXTensorElementDataType t) {
  const size_t inputs = ctx.GetInputCount();
  const InputView x = read_input(ctx, kGroupInputX, label(kGroupInputX, 0));
  const InputView scale = read_input(ctx, kGroupInputScoreScale, label(kGroupInputScoreScale, 0));
  const InputView thr = read_input(ctx, kGroupInputThreshold, label(kGroupInputThreshold, 0));
  if (!x.present() || !scale.present() || !thr.present())
    throw InvalidArgument("inputs 'X', 'score_scale' and 'threshold' are required");
  expect_type(x, label(kGroupInputX, 0), t, "");
  expect_type(scale, label(kGroupInputScoreScale, 0), ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "");
  expect_type(thr, label(kGroupInputThreshold, 0), ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "");
  if (x.shape.empty()) throw InvalidArgument(label(kGroupInputX, 0) + " must have rank >= 1, got a scalar");
  const int64_t K = x.shape.back();
  if (scale.shape.size() != 2 || scale.shape[1] != K || scale.shape[0] < 1) {
    throw InvalidArgument("shape mismatch: " + label(kGroupInputScoreScale, 0) + " must have shape [S, " +
                          std::to_string(K) + "] (one row per weight, K columns), got " + shape_str(scale.shape));
  }
  const int64_t S = scale.shape[0];
  if (S > kGroupMaxWeights)
    throw InvalidArgument("at most " + std::to_string(kGroupMaxWeights) + " weights in one node, got " + std::to_string(S));
  if (thr.shape.size() != 1 || thr.shape[0] != S) {
    throw InvalidArgument("shape mismatch: " + label(kGroupInputThreshold, 0) + " must have shape [" +
                          std::to_string(S) + "] (one threshold per weight), got " + shape_str(thr.shape));
  }
  const int64_t variadic = static_cast<int64_t>(inputs) - static_cast<int64_t>(kGroupFirstWeight);
  if (variadic != S && variadic != 2 * S) {
    throw InvalidArgument("score_scale has " + std::to_string(S) + " rows, so the node needs " + std::to_string(S) +
                          " weights (or " + std::to_string(S) + " weights and " + std::to_string(S) +
                          " biases) after 'threshold', got " + std::to_string(variadic) + " inputs there");
  }
  if (static_cast<int64_t>(ctx.GetOutputCount()) != S) {
    throw InvalidArgument("the node needs one output per weight (" + std::to_string(S) + "), got " +
                          std::to_string(ctx.GetOutputCount()));
  }

  GroupInputs in;
  for (int64_t s = 0; s < S; ++s) {
    const size_t index = kGroupFirstWeight + static_cast<size_t>(s);
    const InputView b = read_input(ctx, index, label(index, S));
    if (!b.present()) throw InvalidArgument(label(index, S) + " is required");
    expect_type(b, label(index, S), t, " (the type of input 'X')");
    if (b.shape.size() != 2 || b.shape[0] != K) {
      throw InvalidArgument("shape mismatch: " + label(index, S) + " must be a 2-D [K, N] weight with K = " +
                            std::to_string(K) + " (the last dimension of 'X'), got " + shape_str(b.shape));
    }
    in.b.push_back(b.value.GetTensorRawData());
    in.n.push_back(b.shape[1]);
    if (variadic == 2 * S) {
      const size_t bi = index + static_cast<size_t>(S);
      const InputView bias = read_input(ctx, bi, label(bi, S));
      if (!bias.present()) throw InvalidArgument(label(bi, S) + " is required when biases are given");
      expect_type(bias, label(bi, S), t, " (the type of input 'X')");
      if (bias.shape.size() != 1 || bias.shape[0] != b.shape[1]) {
        throw InvalidArgument("shape mismatch: " + label(bi, S) + " must have shape [" + std::to_string(b.shape[1]) +
                              "] (the columns of B_" + std::to_string(s) + "), got " + shape_str(bias.shape));
      }
      in.bias.push_back(bias.value.GetTensorRawData());
    }
  }
  in.out_prefix.assign(x.shape.begin(), x.shape.end() - 1);
  in.M = token_count(x);
  in.K = K;
  in.x = x.value.GetTensorRawData();
  in.score_scale = scale.value.GetTensorData<float>();
  in.threshold = thr.value.GetTensorData<float>();
  in.device_id = x.value.GetTensorMemoryInfo().GetDeviceId();
  return in;
}

WinaSparseMatMulGroupKernel::WinaSparseMatMulGroupKernel(const OrtKernelInfo* info, ONNXTensorElementDataType type)
    : CpuKernelBase(node_label(info, kGroupOpType), type) {}

void WinaSparseMatMulGroupKernel::Compute(OrtKernelContext* context) {
  Ort::KernelContext ctx(context);
  const GroupInputs in = read_group_inputs(ctx, onnx_type(dtype_));
  // On the CPU one product per weight: each gates X with its own scale and threshold.
  for (size_t s = 0; s < in.b.size(); ++s) {
    std::vector<int64_t> shape = in.out_prefix;
    shape.push_back(in.n[s]);
    auto y = ctx.GetOutput(s, shape);
    SparseMatMulArgs args;
    args.dtype = dtype_;
    args.x = in.x;
    args.b = in.b[s];
    args.score_scale = in.score_scale + static_cast<int64_t>(s) * in.K;
    args.bias = in.bias.empty() ? nullptr : in.bias[s];
    args.y = y.GetTensorMutableRawData();
    args.M = in.M;
    args.K = in.K;
    args.N = in.n[s];
    args.gating.gating = Gating::kThreshold;
    args.gating.threshold = in.threshold[s];
    sparse_matmul(args, *kernels_, ParallelRunner{context, parallel_run});
  }
}

}  // namespace wina

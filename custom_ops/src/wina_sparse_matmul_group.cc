#include "wina_sparse_matmul_group.h"

#include <string>

namespace wina {

namespace {

// The name of input `index` of a node with `count` weights.
std::string input_name(size_t index, int64_t count) {
  if (index == kGroupInputX) return "X";
  if (index == kGroupInputScoreScale) return "score_scale";
  if (index == kGroupInputThreshold) return "threshold";
  const int64_t j = static_cast<int64_t>(index - kGroupFirstWeight);
  return j < count ? "B_" + std::to_string(j) : "bias_" + std::to_string(j - count);
}

InputView input_at(Ort::KernelContext& ctx, size_t index, int64_t count) {
  return read_input(ctx, index, input_name(index, count));
}

}  // namespace

GroupInputs read_group_inputs(Ort::KernelContext& ctx, ONNXTensorElementDataType t) {
  const size_t inputs = ctx.GetInputCount();
  const InputView x = input_at(ctx, kGroupInputX, 0);
  const InputView scale = input_at(ctx, kGroupInputScoreScale, 0);
  const InputView thr = input_at(ctx, kGroupInputThreshold, 0);
  expect_present({&x, &scale, &thr});
  expect_type(x, t, "");
  expect_type(scale, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "");
  expect_type(thr, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "");
  if (x.shape.empty()) throw InvalidArgument(x.label() + " must have rank >= 1, got a scalar");
  const int64_t K = x.shape.back();
  if (scale.shape.size() != 2 || scale.shape[1] != K || scale.shape[0] < 1) {
    throw InvalidArgument("shape mismatch: " + scale.label() + " must have shape [S, " +
                          std::to_string(K) + "] (one row per weight, K columns), got " + shape_str(scale.shape));
  }
  const int64_t S = scale.shape[0];
  if (S > kGroupMaxWeights)
    throw InvalidArgument("at most " + std::to_string(kGroupMaxWeights) + " weights in one node, got " + std::to_string(S));
  if (thr.shape.size() != 1 || thr.shape[0] != S) {
    throw InvalidArgument("shape mismatch: " + thr.label() + " must have shape [" +
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
    const InputView b = input_at(ctx, index, S);
    if (!b.present()) throw InvalidArgument(b.label() + " is required");
    expect_type(b, t, " (the type of input 'X')");
    if (b.shape.size() != 2 || b.shape[0] != K) {
      throw InvalidArgument("shape mismatch: " + b.label() + " must be a 2-D [K, N] weight with K = " +
                            std::to_string(K) + " (the last dimension of 'X'), got " + shape_str(b.shape));
    }
    in.b.push_back(b.value.GetTensorRawData());
    in.n.push_back(b.shape[1]);
    if (variadic == 2 * S) {
      const size_t bi = index + static_cast<size_t>(S);
      const InputView bias = input_at(ctx, bi, S);
      if (!bias.present()) throw InvalidArgument(bias.label() + " is required when biases are given");
      expect_type(bias, t, " (the type of input 'X')");
      if (bias.shape.size() != 1 || bias.shape[0] != b.shape[1]) {
        throw InvalidArgument("shape mismatch: " + bias.label() + " must have shape [" + std::to_string(b.shape[1]) +
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
    run(args, context);
  }
}

}  // namespace wina

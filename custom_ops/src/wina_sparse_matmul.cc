#include "wina_sparse_matmul.h"

#include <stdexcept>
#include <vector>

#include "sparse_kernel.h"

namespace wina {

namespace {

std::string input_label(size_t index) {
  return std::string("input '") + kInputNames[index] + "' (index " + std::to_string(index) + ")";
}

InputView input_at(Ort::KernelContext& ctx, size_t index) { return read_input(ctx, index, input_label(index)); }

}  // namespace

WinaSparseMatMulKernel::WinaSparseMatMulKernel(const OrtKernelInfo* info, ONNXTensorElementDataType type)
    : CpuKernelBase(node_label(info, kOpType), type), gating_(read_gating(info, node_)) {}

OpInputs read_op_inputs(Ort::KernelContext& ctx, ONNXTensorElementDataType t, Gating gating) {
  const InputView x = input_at(ctx, kInputX);
  const InputView b = input_at(ctx, kInputB);
  const InputView scale = input_at(ctx, kInputScoreScale);
  if (!x.present() || !b.present() || !scale.present())
    throw InvalidArgument("inputs 'X', 'B' and 'score_scale' are required");
  expect_type(x, input_label(kInputX), t, "");
  expect_type(b, input_label(kInputB), t, " (the type of input 'X')");
  expect_type(scale, input_label(kInputScoreScale), ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "");

  if (x.shape.empty()) throw InvalidArgument(input_label(kInputX) + " must have rank >= 1, got a scalar");
  if (b.shape.size() != 2) {
    throw InvalidArgument(input_label(kInputB) + " must be a 2-D [K, N] weight, got rank " +
                          std::to_string(b.shape.size()) + " shape " + shape_str(b.shape));
  }
  const int64_t K = x.shape.back();
  const int64_t N = b.shape[1];
  if (b.shape[0] != K) {
    throw InvalidArgument("shape mismatch: " + input_label(kInputB) + " has shape " + shape_str(b.shape) +
                          " (K = " + std::to_string(b.shape[0]) + ") but " + input_label(kInputX) +
                          " has shape " + shape_str(x.shape) + " (K = last dimension = " +
                          std::to_string(K) + ")");
  }
  if (scale.shape.size() != 1 || scale.shape[0] != K) {
    throw InvalidArgument("shape mismatch: " + input_label(kInputScoreScale) + " must have shape [" +
                          std::to_string(K) + "] (K), got " + shape_str(scale.shape));
  }

  // The rule's scalar parameter.
  OpInputs in;
  const GatingRule& rule = gating_rule(gating);
  const size_t param_index = gating_param_input(rule.param);
  const InputView param = input_at(ctx, param_index);
  if (!param.present()) {
    throw InvalidArgument(std::string("gating='") + rule.name + "' needs " + input_label(param_index) +
                          ", which is missing");
  }
  if (rule.param == GatingParam::kK) {
    expect_type(param, input_label(param_index), ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, "");
    expect_scalar(param, input_label(param_index));
    in.k = param.value.GetTensorData<int64_t>();
  } else {
    expect_type(param, input_label(param_index), ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "");
    expect_scalar(param, input_label(param_index));
    in.threshold = param.value.GetTensorData<float>();
  }

  const InputView bias = input_at(ctx, kInputBias);
  if (bias.present()) {
    expect_type(bias, input_label(kInputBias), t, " (the type of input 'X')");
    if (bias.shape.size() != 1 || bias.shape[0] != N) {
      throw InvalidArgument("shape mismatch: " + input_label(kInputBias) + " must have shape [" +
                            std::to_string(N) + "] (N, the columns of 'B'), got " + shape_str(bias.shape));
    }
  }

  in.out_shape.assign(x.shape.begin(), x.shape.end() - 1);
  in.out_shape.push_back(N);
  in.M = token_count(x);
  in.K = K;
  in.N = N;
  in.x = x.value.GetTensorRawData();
  in.b = b.value.GetTensorRawData();
  in.score_scale = scale.value.GetTensorData<float>();
  in.bias = bias.present() ? bias.value.GetTensorRawData() : nullptr;
  in.device_id = x.value.GetTensorMemoryInfo().GetDeviceId();
  return in;
}

void WinaSparseMatMulKernel::Compute(OrtKernelContext* context) {
  Ort::KernelContext ctx(context);
  const OpInputs in = read_op_inputs(ctx, onnx_type(dtype_), gating_);

  auto y = ctx.GetOutput(0, in.out_shape);

  SparseMatMulArgs args;
  args.dtype = dtype_;
  args.x = in.x;
  args.b = in.b;
  args.score_scale = in.score_scale;
  args.bias = in.bias;
  args.y = y.GetTensorMutableRawData();
  args.M = in.M;
  args.K = in.K;
  args.N = in.N;
  args.gating.gating = gating_;
  if (in.k != nullptr) args.gating.k = *in.k;
  if (in.threshold != nullptr) args.gating.threshold = *in.threshold;
  sparse_matmul(args, *kernels_, ParallelRunner{context, parallel_run});
}

}  // namespace wina

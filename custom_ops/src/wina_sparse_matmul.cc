#include "wina_sparse_matmul.h"

#include <string>

namespace wina {

namespace {

InputView input_at(Ort::KernelContext& ctx, size_t index) { return read_input(ctx, index, kInputs[index].name); }

}  // namespace

OpInputs read_op_inputs(Ort::KernelContext& ctx, ONNXTensorElementDataType t, Gating gating) {
  const InputView x = input_at(ctx, kInputX);
  const InputView b = input_at(ctx, kInputB);
  const InputView scale = input_at(ctx, kInputScoreScale);
  expect_present({&x, &b, &scale});
  expect_type(x, t, "");
  expect_type(b, t, " (the type of input 'X')");
  expect_type(scale, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "");

  if (x.shape.empty()) throw InvalidArgument(x.label() + " must have rank >= 1, got a scalar");
  if (b.shape.size() != 2) {
    throw InvalidArgument(b.label() + " must be a 2-D [K, N] weight, got rank " + std::to_string(b.shape.size()) +
                          " shape " + shape_str(b.shape));
  }
  const int64_t K = x.shape.back();
  const int64_t N = b.shape[1];
  if (b.shape[0] != K) {
    throw InvalidArgument("shape mismatch: " + b.label() + " has shape " + shape_str(b.shape) + " (K = " +
                          std::to_string(b.shape[0]) + ") but " + x.label() + " has shape " + shape_str(x.shape) +
                          " (K = last dimension = " + std::to_string(K) + ")");
  }
  if (scale.shape.size() != 1 || scale.shape[0] != K) {
    throw InvalidArgument("shape mismatch: " + scale.label() + " must have shape [" + std::to_string(K) +
                          "] (K), got " + shape_str(scale.shape));
  }

  OpInputs in;
  const GatingRule& rule = gating_rule(gating);
  read_gating_param(input_at(ctx, gating_param_input(rule.param)), rule, &in);

  const InputView bias = input_at(ctx, kInputBias);
  if (bias.present()) {
    expect_type(bias, t, " (the type of input 'X')");
    if (bias.shape.size() != 1 || bias.shape[0] != N) {
      throw InvalidArgument("shape mismatch: " + bias.label() + " must have shape [" + std::to_string(N) +
                            "] (N, the columns of 'B'), got " + shape_str(bias.shape));
    }
  }

  set_gated_inputs(x, scale, bias, N, &in);
  in.K = K;
  in.N = N;
  in.b = b.value.GetTensorRawData();
  return in;
}

void WinaSparseMatMulKernel::Compute(OrtKernelContext* context) {
  Ort::KernelContext ctx(context);
  const OpInputs in = read_op_inputs(ctx, onnx_type(dtype_), attrs_);
  auto y = ctx.GetOutput(0, in.out_shape);
  SparseMatMulArgs args = gated_args(in, attrs_, in.K, in.N, y.GetTensorMutableRawData());
  args.b = in.b;
  run(args, context);
}

}  // namespace wina

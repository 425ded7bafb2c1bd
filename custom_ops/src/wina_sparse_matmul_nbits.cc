#include "wina_sparse_matmul_nbits.h"

#include <string>
#include <vector>

#include "sparse_kernel.h"

namespace wina {

namespace {

std::string input_label(size_t index) {
  return std::string("input '") + kNBitsInputNames[index] + "' (index " + std::to_string(index) + ")";
}

InputView input_at(Ort::KernelContext& ctx, size_t index) { return read_input(ctx, index, input_label(index)); }

// Throws unless `in` has exactly the shape `want`, `layout` in terms of the attributes.
void expect_shape(const InputView& in, size_t index, const std::vector<int64_t>& want, const char* layout,
                  const NBitsAttributes& attrs) {
  if (in.shape != want) {
    throw InvalidArgument("shape mismatch: " + input_label(index) + " must have shape " + shape_str(want) + " (" +
                          layout + " with K=" + std::to_string(attrs.K) + ", N=" + std::to_string(attrs.N) +
                          ", block_size=" + std::to_string(attrs.block_size) + "), got " + shape_str(in.shape));
  }
}

}  // namespace

NBitsInputs read_nbits_inputs(Ort::KernelContext& ctx, ONNXTensorElementDataType t, const NBitsAttributes& attrs) {
  const InputView x = input_at(ctx, kNBitsInputX);
  const InputView b = input_at(ctx, kNBitsInputB);
  const InputView scales = input_at(ctx, kNBitsInputScales);
  const InputView score = input_at(ctx, kNBitsInputScoreScale);
  if (!x.present() || !b.present() || !scales.present() || !score.present())
    throw InvalidArgument("inputs 'X', 'B', 'scales' and 'score_scale' are required");
  expect_type(x, input_label(kNBitsInputX), t, "");
  expect_type(b, input_label(kNBitsInputB), ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, "");
  expect_type(scales, input_label(kNBitsInputScales), t, " (the type of input 'X')");
  expect_type(score, input_label(kNBitsInputScoreScale), ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "");

  const int64_t K = attrs.K, N = attrs.N, G = attrs.block_size;
  const int64_t blocks = (K + G - 1) / G, ldb = (N + 1) / 2;
  if (x.shape.empty() || x.shape.back() != K) {
    throw InvalidArgument("shape mismatch: " + input_label(kNBitsInputX) + " has shape " + shape_str(x.shape) +
                          " but its last dimension must be the attribute K=" + std::to_string(K));
  }
  expect_shape(b, kNBitsInputB, {K, ldb}, "[K, ceil(N/2)]", attrs);
  expect_shape(scales, kNBitsInputScales, {blocks, N}, "[ceil(K/block_size), N]", attrs);
  expect_shape(score, kNBitsInputScoreScale, {K}, "[K]", attrs);

  NBitsInputs in;
  const InputView zeros = input_at(ctx, kNBitsInputZeroPoints);
  if (zeros.present()) {
    if (zeros.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8) {
      expect_shape(zeros, kNBitsInputZeroPoints, {blocks, ldb}, "uint8 zero points are [ceil(K/block_size), ceil(N/2)]",
                   attrs);
      in.zero_kind = kZeroPointsPacked;
    } else if (zeros.type == t) {
      expect_shape(zeros, kNBitsInputZeroPoints, {blocks, N}, "float zero points are [ceil(K/block_size), N]", attrs);
      in.zero_kind = kZeroPointsFloat;
    } else {
      throw InvalidArgument(input_label(kNBitsInputZeroPoints) + " has element type " + type_name(zeros.type) +
                            " but must be uint8 or " + type_name(t) + " (the type of input 'X')");
    }
    in.zero_points = zeros.value.GetTensorRawData();
  }

  // The rule's scalar parameter.
  const GatingRule& rule = gating_rule(attrs.gating);
  const size_t param_index = nbits_gating_param_input(rule.param);
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

  const InputView bias = input_at(ctx, kNBitsInputBias);
  if (bias.present()) {
    expect_type(bias, input_label(kNBitsInputBias), t, " (the type of input 'X')");
    expect_shape(bias, kNBitsInputBias, {N}, "[N]", attrs);
    in.bias = bias.value.GetTensorRawData();
  }

  in.out_shape.assign(x.shape.begin(), x.shape.end() - 1);
  in.out_shape.push_back(N);
  in.M = token_count(x);
  in.x = x.value.GetTensorRawData();
  in.b = b.value.GetTensorData<uint8_t>();
  in.scales = scales.value.GetTensorRawData();
  in.score_scale = score.value.GetTensorData<float>();
  in.device_id = x.value.GetTensorMemoryInfo().GetDeviceId();
  return in;
}

NbitsWeight nbits_weight(const NBitsInputs& in, const NBitsAttributes& attrs, DType dtype) {
  NbitsWeight w;
  w.codes = in.b;
  w.scales = in.scales;
  w.zero_points = in.zero_points;
  w.dtype = dtype;
  w.zero_kind = in.zero_kind;
  w.K = attrs.K;
  w.N = attrs.N;
  w.ldb = (attrs.N + 1) / 2;
  w.block_size = attrs.block_size;
  w.blocks = (attrs.K + attrs.block_size - 1) / attrs.block_size;
  return w;
}

WinaSparseMatMulNBitsKernel::WinaSparseMatMulNBitsKernel(const OrtKernelInfo* info, ONNXTensorElementDataType type)
    : dtype_(dtype_of(type)),
      node_(node_label(info, kNBitsOpType)),
      attrs_(read_nbits_attributes(info, node_)),
      kernels_(&select_isa_kernels()) {}

OrtStatusPtr WinaSparseMatMulNBitsKernel::ComputeV2(OrtKernelContext* context) {
  return compute_status(node_, [&] { Compute(context); });
}

void WinaSparseMatMulNBitsKernel::Compute(OrtKernelContext* context) {
  Ort::KernelContext ctx(context);
  const NBitsInputs in = read_nbits_inputs(ctx, onnx_type(dtype_), attrs_);
  auto y = ctx.GetOutput(0, in.out_shape);
  const NbitsWeight weight = nbits_weight(in, attrs_, dtype_);

  SparseMatMulArgs args;
  args.dtype = dtype_;
  args.x = in.x;
  args.b = nullptr;
  args.score_scale = in.score_scale;
  args.bias = in.bias;
  args.y = y.GetTensorMutableRawData();
  args.M = in.M;
  args.K = attrs_.K;
  args.N = attrs_.N;
  args.gating.gating = attrs_.gating;
  if (in.k != nullptr) args.gating.k = *in.k;
  if (in.threshold != nullptr) args.gating.threshold = *in.threshold;
  args.nbits = &weight;
  // accuracy_level 4 is MatMulNBits' int8 compute: the decode may quantize x per block.
  args.int8_activations = attrs_.accuracy_level == 4;
  sparse_matmul(args, *kernels_, ParallelRunner{context, parallel_run});
}

}  // namespace wina

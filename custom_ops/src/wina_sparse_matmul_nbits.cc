#include "wina_sparse_matmul_nbits.h"

#include <algorithm>
#include <initializer_list>
#include <string>
#include <vector>

namespace wina {

namespace {

// Throws unless `in` has exactly the shape `want`, `layout` in terms of the attributes.
void check_shape(const InputView& in, std::initializer_list<int64_t> want, const char* layout,
                 const NBitsAttributes& attrs) {
  if (in.shape.size() == want.size() && std::equal(want.begin(), want.end(), in.shape.begin())) return;
  throw InvalidArgument("shape mismatch: " + in.label() + " must have shape " +
                        shape_str(std::vector<int64_t>(want)) + " (" + layout + " with K=" + std::to_string(attrs.K) +
                        ", N=" + std::to_string(attrs.N) + ", block_size=" + std::to_string(attrs.block_size) +
                        "), got " + shape_str(in.shape));
}

}  // namespace

NBitsConstantInputs read_nbits_constant_inputs(const OrtKernelInfo* info) {
  NBitsConstantInputs constants;
  Ort::ConstKernelInfo kinfo(info);
  const size_t count = kinfo.GetInputCount();
  for (size_t i = kNBitsInputB; i < kNBitsNumInputs && i < count; ++i) {
    int is_constant = 0;
    Ort::ConstValue value{nullptr};
    try {
      value = kinfo.GetTensorConstantInput(i, &is_constant);
    } catch (const Ort::Exception&) {
      continue;  // an absent optional input
    }
    if (is_constant && static_cast<const OrtValue*>(value) != nullptr && value.IsTensor())
      constants[i] = tensor_view(value, i, kNBitsInputs[i].name);
  }
  return constants;
}

NBitsInputs read_nbits_inputs(Ort::KernelContext& ctx, ONNXTensorElementDataType t, const NBitsAttributes& attrs,
                              const NBitsConstantInputs* constants) {
  NBitsConstantInputs fetched;
  auto view = [&](size_t index) -> const InputView& {
    if (constants != nullptr && (*constants)[index].present()) return (*constants)[index];
    fetched[index] = read_input(ctx, index, kNBitsInputs[index].name);
    return fetched[index];
  };
  const InputView& x = view(kNBitsInputX);
  const InputView& b = view(kNBitsInputB);
  const InputView& scales = view(kNBitsInputScales);
  const InputView& score = view(kNBitsInputScoreScale);
  expect_present({&x, &b, &scales, &score});
  expect_type(x, t, "");
  expect_type(b, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, "");
  expect_type(scales, t, " (the type of input 'X')");
  expect_type(score, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "");

  const int64_t K = attrs.K, N = attrs.N, G = attrs.block_size;
  const int64_t blocks = (K + G - 1) / G, ldb = (N + 1) / 2;
  if (x.shape.empty() || x.shape.back() != K) {
    throw InvalidArgument("shape mismatch: " + x.label() + " has shape " + shape_str(x.shape) +
                          " but its last dimension must be the attribute K=" + std::to_string(K));
  }
  check_shape(b, {K, ldb}, "[K, ceil(N/2)]", attrs);
  check_shape(scales, {blocks, N}, "[ceil(K/block_size), N]", attrs);
  check_shape(score, {K}, "[K]", attrs);

  NBitsInputs in;
  const InputView& zeros = view(kNBitsInputZeroPoints);
  if (zeros.present()) {
    if (zeros.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8) {
      check_shape(zeros, {blocks, ldb}, "uint8 zero points are [ceil(K/block_size), ceil(N/2)]", attrs);
      in.zero_kind = kZeroPointsPacked;
    } else if (zeros.type == t) {
      check_shape(zeros, {blocks, N}, "float zero points are [ceil(K/block_size), N]", attrs);
      in.zero_kind = kZeroPointsFloat;
    } else {
      throw InvalidArgument(zeros.label() + " has element type " + type_name(zeros.type) +
                            " but must be uint8 or " + type_name(t) + " (the type of input 'X')");
    }
    in.zero_points = zeros.value.GetTensorRawData();
  }

  const GatingRule& rule = gating_rule(attrs.gating);
  read_gating_param(view(nbits_gating_param_input(rule.param)), rule, &in);

  const InputView& bias = view(kNBitsInputBias);
  if (bias.present()) {
    expect_type(bias, t, " (the type of input 'X')");
    check_shape(bias, {N}, "[N]", attrs);
  }

  set_gated_inputs(x, score, bias, N, &in);
  in.b = b.value.GetTensorData<uint8_t>();
  in.scales = scales.value.GetTensorRawData();
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
    : OpKernel(info, type), constants_(read_nbits_constant_inputs(info)) {}

void WinaSparseMatMulNBitsKernel::Compute(OrtKernelContext* context) {
  Ort::KernelContext ctx(context);
  const NBitsInputs in = read_nbits_inputs(ctx, onnx_type(dtype_), attrs_, &constants_);
  auto y = ctx.GetOutput(0, in.out_shape);
  const NbitsWeight weight = nbits_weight(in, attrs_, dtype_);
  SparseMatMulArgs args = gated_args(in, attrs_.gating, attrs_.K, attrs_.N, y.GetTensorMutableRawData());
  args.nbits = &weight;
  // accuracy_level 4 is MatMulNBits' int8 compute: the decode may quantize x per block.
  args.int8_activations = attrs_.accuracy_level == 4;
  run(args, context);
}

}  // namespace wina

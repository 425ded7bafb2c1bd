#include "wina_sparse_matmul_nbits.h"

#include <algorithm>
#include <initializer_list>
#include <string>
#include <vector>

#include "sparse_kernel.h"

namespace wina {

namespace {

std::string input_label(size_t index) {
  return std::string("input '") + kNBitsInputNames[index] + "' (index " + std::to_string(index) + ")";
}

// read_input with the label built only for an error (this runs for every token).
InputView fetch_input(Ort::KernelContext& ctx, size_t index) {
  InputView in;
  if (index >= ctx.GetInputCount()) return in;
  in.value = ctx.GetInput(index);
  if (!in.present()) return in;
  if (!in.value.IsTensor()) throw InvalidArgument(input_label(index) + " must be a tensor");
  auto info = in.value.GetTensorTypeAndShapeInfo();
  in.type = info.GetElementType();
  in.shape = info.GetShape();
  in.elements = static_cast<int64_t>(info.GetElementCount());
  return in;
}

void check_type(const InputView& in, size_t index, ONNXTensorElementDataType want, const char* why) {
  if (in.type != want) expect_type(in, input_label(index), want, why);  // throws
}

// Throws unless `in` has exactly the shape `want`, `layout` in terms of the attributes.
void check_shape(const InputView& in, size_t index, std::initializer_list<int64_t> want, const char* layout,
                 const NBitsAttributes& attrs) {
  if (in.shape.size() == want.size() && std::equal(want.begin(), want.end(), in.shape.begin())) return;
  throw InvalidArgument("shape mismatch: " + input_label(index) + " must have shape " +
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
    if (!is_constant || static_cast<const OrtValue*>(value) == nullptr || !value.IsTensor()) continue;
    InputView& in = constants[i];
    in.value = value;
    auto type_shape = value.GetTensorTypeAndShapeInfo();
    in.type = type_shape.GetElementType();
    in.shape = type_shape.GetShape();
    in.elements = static_cast<int64_t>(type_shape.GetElementCount());
  }
  return constants;
}

NBitsInputs read_nbits_inputs(Ort::KernelContext& ctx, ONNXTensorElementDataType t, const NBitsAttributes& attrs,
                              const NBitsConstantInputs* constants) {
  NBitsConstantInputs fetched;
  auto view = [&](size_t index) -> const InputView& {
    if (constants != nullptr && (*constants)[index].present()) return (*constants)[index];
    fetched[index] = fetch_input(ctx, index);
    return fetched[index];
  };
  const InputView& x = view(kNBitsInputX);
  const InputView& b = view(kNBitsInputB);
  const InputView& scales = view(kNBitsInputScales);
  const InputView& score = view(kNBitsInputScoreScale);
  if (!x.present() || !b.present() || !scales.present() || !score.present())
    throw InvalidArgument("inputs 'X', 'B', 'scales' and 'score_scale' are required");
  check_type(x, kNBitsInputX, t, "");
  check_type(b, kNBitsInputB, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, "");
  check_type(scales, kNBitsInputScales, t, " (the type of input 'X')");
  check_type(score, kNBitsInputScoreScale, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "");

  const int64_t K = attrs.K, N = attrs.N, G = attrs.block_size;
  const int64_t blocks = (K + G - 1) / G, ldb = (N + 1) / 2;
  if (x.shape.empty() || x.shape.back() != K) {
    throw InvalidArgument("shape mismatch: " + input_label(kNBitsInputX) + " has shape " + shape_str(x.shape) +
                          " but its last dimension must be the attribute K=" + std::to_string(K));
  }
  check_shape(b, kNBitsInputB, {K, ldb}, "[K, ceil(N/2)]", attrs);
  check_shape(scales, kNBitsInputScales, {blocks, N}, "[ceil(K/block_size), N]", attrs);
  check_shape(score, kNBitsInputScoreScale, {K}, "[K]", attrs);

  NBitsInputs in;
  const InputView& zeros = view(kNBitsInputZeroPoints);
  if (zeros.present()) {
    if (zeros.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8) {
      check_shape(zeros, kNBitsInputZeroPoints, {blocks, ldb}, "uint8 zero points are [ceil(K/block_size), ceil(N/2)]",
                  attrs);
      in.zero_kind = kZeroPointsPacked;
    } else if (zeros.type == t) {
      check_shape(zeros, kNBitsInputZeroPoints, {blocks, N}, "float zero points are [ceil(K/block_size), N]", attrs);
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
  const InputView& param = view(param_index);
  if (!param.present()) {
    throw InvalidArgument(std::string("gating='") + rule.name + "' needs " + input_label(param_index) +
                          ", which is missing");
  }
  if (param.shape.size() > 1 || param.elements != 1) expect_scalar(param, input_label(param_index));  // throws
  if (rule.param == GatingParam::kK) {
    check_type(param, param_index, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, "");
    in.k = param.value.GetTensorData<int64_t>();
  } else {
    check_type(param, param_index, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "");
    in.threshold = param.value.GetTensorData<float>();
  }

  const InputView& bias = view(kNBitsInputBias);
  if (bias.present()) {
    check_type(bias, kNBitsInputBias, t, " (the type of input 'X')");
    check_shape(bias, kNBitsInputBias, {N}, "[N]", attrs);
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
    : CpuKernelBase(node_label(info, kNBitsOpType), type),
      attrs_(read_nbits_attributes(info, node_)),
      constants_(read_nbits_constant_inputs(info)) {}

void WinaSparseMatMulNBitsKernel::Compute(OrtKernelContext* context) {
  Ort::KernelContext ctx(context);
  const NBitsInputs in = read_nbits_inputs(ctx, onnx_type(dtype_), attrs_, &constants_);
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

#include "wina_sparse_matmul.h"

#include <stdexcept>
#include <vector>

#include "sparse_kernel.h"

namespace wina {

namespace {

const char* const kInputNames[kNumInputs] = {"X", "B", "score_scale", "threshold", "k", "bias"};

std::string input_label(size_t index) {
  return std::string("input '") + kInputNames[index] + "' (index " + std::to_string(index) + ")";
}

InputView input_at(Ort::KernelContext& ctx, size_t index) { return read_input(ctx, index, input_label(index)); }

}  // namespace

NodeConfig read_node_config(const OrtKernelInfo* info) {
  Ort::ConstKernelInfo kinfo(info);
  NodeConfig config;
  std::string name;
  try {
    name = kinfo.GetNodeName();
  } catch (const Ort::Exception&) {
  }
  config.node = std::string(kOpType) + " node '" + name + "'";

  std::string gating;
  try {
    gating = kinfo.GetAttribute<std::string>(kAttrGating);
  } catch (const Ort::Exception&) {
    throw InvalidArgument(config.node + ": attribute '" + kAttrGating + "' is missing; it must be \"" +
                          kGatingTopK + "\" or \"" + kGatingThreshold + "\"");
  }
  if (gating == kGatingTopK) {
    config.gating = Gating::kTopK;
  } else if (gating == kGatingThreshold) {
    config.gating = Gating::kThreshold;
  } else {
    throw InvalidArgument(config.node + ": unknown gating '" + gating + "'; attribute '" + kAttrGating +
                          "' must be \"" + kGatingTopK + "\" or \"" + kGatingThreshold + "\"");
  }
  return config;
}

OrtStatusPtr status_from_current_exception(const std::string& node) {
  try {
    throw;
  } catch (const InvalidArgument& e) {
    return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT, (node + ": " + e.what()).c_str());
  } catch (const Ort::Exception& e) {
    return Ort::GetApi().CreateStatus(e.GetOrtErrorCode(), (node + ": " + e.what()).c_str());
  } catch (const std::exception& e) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, (node + ": " + e.what()).c_str());
  } catch (...) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, (node + ": unknown error").c_str());
  }
}

WinaSparseMatMulKernel::WinaSparseMatMulKernel(const OrtKernelInfo* info, DType dtype)
    : dtype_(dtype), gating_(Gating::kTopK), kernels_(&select_isa_kernels()) {
  NodeConfig config = read_node_config(info);
  gating_ = config.gating;
  node_ = std::move(config.node);
}

OrtStatusPtr WinaSparseMatMulKernel::ComputeV2(OrtKernelContext* context) {
  try {
    Compute(context);
    return nullptr;
  } catch (...) {
    return status_from_current_exception(node_);
  }
}

OpInputs read_op_inputs(Ort::KernelContext& ctx, ONNXTensorElementDataType t, Gating gating_mode) {
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

  OpInputs in;
  if (gating_mode == Gating::kTopK) {
    const InputView k = input_at(ctx, kInputK);
    if (!k.present())
      throw InvalidArgument("gating='topk' needs " + input_label(kInputK) + ", which is missing");
    expect_type(k, input_label(kInputK), ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, "");
    expect_scalar(k, input_label(kInputK));
    in.k = k.value.GetTensorData<int64_t>();
  } else {
    const InputView thr = input_at(ctx, kInputThreshold);
    if (!thr.present())
      throw InvalidArgument("gating='threshold' needs " + input_label(kInputThreshold) + ", which is missing");
    expect_type(thr, input_label(kInputThreshold), ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "");
    expect_scalar(thr, input_label(kInputThreshold));
    in.threshold = thr.value.GetTensorData<float>();
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

  GatingParams gating;
  gating.mode = gating_;
  if (gating_ == Gating::kTopK) {
    gating.k = *in.k;
  } else {
    gating.threshold = *in.threshold;
  }

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
  args.gating = gating;
  sparse_matmul(args, *kernels_, ParallelRunner{context, parallel_run});
}

OrtStatusPtr WinaSparseMatMulOp::CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info,
                                                void** kernel) const {
  try {
    *kernel = new WinaSparseMatMulKernel(info, dtype_of(type_));
    return nullptr;
  } catch (const InvalidArgument& e) {
    return api.CreateStatus(ORT_INVALID_ARGUMENT, e.what());
  } catch (const std::exception& e) {
    return api.CreateStatus(ORT_FAIL, (std::string(kOpType) + ": " + e.what()).c_str());
  }
}

ONNXTensorElementDataType op_input_type(ONNXTensorElementDataType type, size_t index) {
  switch (index) {
    case kInputScoreScale:
    case kInputThreshold: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    case kInputK: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
    default: return type;  // X, B, bias
  }
}

OrtCustomOpInputOutputCharacteristic op_input_characteristic(size_t index) {
  return index >= kInputThreshold ? OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_OPTIONAL
                                  : OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED;
}

ONNXTensorElementDataType WinaSparseMatMulOp::GetInputType(size_t index) const {
  return op_input_type(type_, index);
}

OrtCustomOpInputOutputCharacteristic WinaSparseMatMulOp::GetInputCharacteristic(size_t index) const {
  return op_input_characteristic(index);
}

}  // namespace wina

#include "tensor_checks.h"

#include <sstream>
#include <utility>

namespace wina {

std::string join_words(const std::vector<std::string>& words, const char* last) {
  std::string s;
  for (size_t i = 0; i < words.size(); ++i) {
    if (i > 0) s += i + 1 == words.size() ? last : ", ";
    s += words[i];
  }
  return s;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << '[';
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << ']';
  return s.str();
}

const char* type_name(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return "bfloat16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    default: return "another type";
  }
}

ONNXTensorElementDataType onnx_type(DType dt) {
  switch (dt) {
    case kFloat16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
    case kBFloat16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16;
    default: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
}

DType dtype_of(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return kFloat16;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return kBFloat16;
    default: return kFloat32;
  }
}

std::string InputView::label() const {
  return "input '" + name + "' (index " + std::to_string(index) + ")";
}

InputView tensor_view(Ort::ConstValue value, size_t index, std::string name) {
  InputView in;
  in.value = value;
  in.index = index;
  in.name = std::move(name);
  auto info = value.GetTensorTypeAndShapeInfo();
  in.type = info.GetElementType();
  in.shape = info.GetShape();
  in.elements = static_cast<int64_t>(info.GetElementCount());
  return in;
}

InputView read_input(Ort::KernelContext& ctx, size_t index, std::string name) {
  InputView absent;
  absent.index = index;
  absent.name = std::move(name);
  if (index >= ctx.GetInputCount()) return absent;
  const Ort::ConstValue value = ctx.GetInput(index);
  if (static_cast<const OrtValue*>(value) == nullptr) return absent;
  if (!value.IsTensor()) throw InvalidArgument(absent.label() + " must be a tensor");
  return tensor_view(value, index, std::move(absent.name));
}

void expect_present(std::initializer_list<const InputView*> inputs) {
  bool all = true;
  for (const InputView* in : inputs) all = all && in->present();
  if (all) return;
  std::vector<std::string> names;
  for (const InputView* in : inputs) names.push_back("'" + in->name + "'");
  throw InvalidArgument("inputs " + join_words(names, " and ") + " are required");
}

void expect_type(const InputView& in, ONNXTensorElementDataType want, const char* why) {
  if (in.type != want) {
    throw InvalidArgument(in.label() + " has element type " + type_name(in.type) + " but must be " +
                          type_name(want) + why);
  }
}

void expect_scalar(const InputView& in) {
  if (in.shape.size() > 1 || in.elements != 1) {
    throw InvalidArgument(in.label() + " must be a scalar (shape [] or [1]), got shape " + shape_str(in.shape));
  }
}

int64_t token_count(const InputView& x) {
  const int64_t K = x.shape.back();
  if (K > 0) return x.elements / K;
  int64_t m = 1;
  for (size_t i = 0; i + 1 < x.shape.size(); ++i) m *= x.shape[i];
  return m;
}

void read_gating_param(const InputView& param, const GatingRule& rule, GatedInputs* in) {
  if (!param.present())
    throw InvalidArgument(std::string("gating='") + rule.name + "' needs " + param.label() + ", which is missing");
  const bool k = rule.param == GatingParam::kK;
  expect_type(param, k ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "");
  expect_scalar(param);
  if (k) {
    in->k = param.value.GetTensorData<int64_t>();
  } else {
    in->threshold = param.value.GetTensorData<float>();
  }
}

void set_gated_inputs(const InputView& x, const InputView& score_scale, const InputView& bias, int64_t N,
                      GatedInputs* in) {
  in->out_shape.assign(x.shape.begin(), x.shape.end() - 1);
  in->out_shape.push_back(N);
  in->M = token_count(x);
  in->x = x.value.GetTensorRawData();
  in->score_scale = score_scale.value.GetTensorData<float>();
  in->bias = bias.present() ? bias.value.GetTensorRawData() : nullptr;
  in->device_id = x.value.GetTensorMemoryInfo().GetDeviceId();
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

void parallel_run(void* context, void (*fn)(void*, size_t), size_t total, void* data) {
  Ort::KernelContext ctx(static_cast<OrtKernelContext*>(context));
  ctx.ParallelFor(fn, total, 0, data);
}

}  // namespace wina

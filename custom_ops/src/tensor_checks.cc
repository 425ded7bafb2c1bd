#include "tensor_checks.h"

#include <sstream>

namespace wina {

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

InputView read_input(Ort::KernelContext& ctx, size_t index, const std::string& label) {
  InputView in;
  if (index >= ctx.GetInputCount()) return in;
  in.value = ctx.GetInput(index);
  if (!in.present()) return in;
  if (!in.value.IsTensor()) throw InvalidArgument(label + " must be a tensor");
  auto info = in.value.GetTensorTypeAndShapeInfo();
  in.type = info.GetElementType();
  in.shape = info.GetShape();
  in.elements = static_cast<int64_t>(info.GetElementCount());
  return in;
}

void expect_type(const InputView& in, const std::string& label, ONNXTensorElementDataType want, const char* why) {
  if (in.type != want) {
    throw InvalidArgument(label + " has element type " + type_name(in.type) + " but must be " + type_name(want) +
                          why);
  }
}

void expect_scalar(const InputView& in, const std::string& label) {
  if (in.shape.size() > 1 || in.elements != 1) {
    throw InvalidArgument(label + " must be a scalar (shape [] or [1]), got shape " + shape_str(in.shape));
  }
}

int64_t token_count(const InputView& x) {
  const int64_t K = x.shape.back();
  if (K > 0) return x.elements / K;
  int64_t m = 1;
  for (size_t i = 0; i + 1 < x.shape.size(); ++i) m *= x.shape[i];
  return m;
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

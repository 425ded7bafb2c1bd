// The ORT op object of every op of the library: CustomOp<Schema, Kernel> takes its
// name, inputs and outputs from a schema trait (op_schema.h) and its execution provider
// from the kernel class (Kernel::kProvider). A kernel class is built from
// (const OrtKernelInfo*, element type) and has OrtStatusPtr ComputeV2(OrtKernelContext*).
#pragma once

#include <exception>
#include <string>
#include <utility>

#include "isa/isa.h"
#include "ort_api.h"
#include "tensor_checks.h"

namespace wina {

template <typename Schema, typename Kernel>
struct CustomOp : Ort::CustomOpBase<CustomOp<Schema, Kernel>, Kernel, /*WithStatus=*/true> {
  explicit CustomOp(ONNXTensorElementDataType type) : type_(type) {}

  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    try {
      *kernel = new Kernel(info, type_);
      return nullptr;
    } catch (const InvalidArgument& e) {  // names the node already
      return api.CreateStatus(ORT_INVALID_ARGUMENT, e.what());
    } catch (const Ort::Exception& e) {
      return api.CreateStatus(e.GetOrtErrorCode(), (std::string(Schema::kName) + ": " + e.what()).c_str());
    } catch (const std::exception& e) {
      return api.CreateStatus(ORT_FAIL, (std::string(Schema::kName) + ": " + e.what()).c_str());
    }
  }

  const char* GetName() const { return Schema::kName; }
  const char* GetExecutionProviderType() const { return Kernel::kProvider; }

  size_t GetInputTypeCount() const { return Schema::kInputCount; }
  ONNXTensorElementDataType GetInputType(size_t index) const { return Schema::input_type(index, type_); }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return Schema::input_characteristic(index);
  }

  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t /*index*/) const { return type_; }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t /*index*/) const {
    return Schema::kOutputCharacteristic;
  }

  // No InferOutputShape: the C++ helper cannot see the element type nor tell an
  // absent optional input from an unknown shape, and ORT runs fine without it.

 private:
  ONNXTensorElementDataType type_;
};

// Runs compute(); an exception becomes an OrtStatus prefixed with `node` (ComputeV2 of
// every kernel).
template <typename Fn>
OrtStatusPtr compute_status(const std::string& node, Fn&& compute) {
  try {
    compute();
    return nullptr;
  } catch (...) {
    return status_from_current_exception(node);
  }
}

// What the CPU kernels hold: the element type, the node's label for errors and the
// instruction-set table chosen for this CPU.
class CpuKernelBase {
 public:
  static constexpr const char* kProvider = "CPUExecutionProvider";
  CpuKernelBase(std::string node, ONNXTensorElementDataType type)
      : dtype_(dtype_of(type)), node_(std::move(node)), kernels_(&select_isa_kernels()) {}
  virtual ~CpuKernelBase() = default;

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return compute_status(node_, [&] { Compute(context); });
  }

 protected:
  virtual void Compute(OrtKernelContext* context) = 0;

  DType dtype_;
  std::string node_;  // "<op> node 'name'" for error messages
  const IsaKernels* kernels_;
};

}  // namespace wina

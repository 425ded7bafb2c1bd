// The ORT op object of every op of the library: CustomOp<Schema, Kernel> takes its
// name, inputs and outputs from a schema trait (op_schema.h) and its execution provider
// from the kernel class (Kernel::kProvider). A kernel class is built from
// (const OrtKernelInfo*, element type) and has OrtStatusPtr ComputeV2(OrtKernelContext*):
// an OpKernel<Schema, provider base> (below) with its Compute.
#pragma once

#include <exception>
#include <string>
#include <utility>

#include "isa/isa.h"
#include "op_schema.h"
#include "ort_api.h"
#include "sparse_kernel.h"
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

// What the CPU kernels hold: the element type and the instruction-set table chosen for
// this CPU, with which they run the CPU computation (sparse_kernel.h).
class CpuKernelBase {
 public:
  static constexpr const char* kProvider = "CPUExecutionProvider";
  CpuKernelBase(const OrtKernelInfo* /*info*/, ONNXTensorElementDataType type)
      : dtype_(dtype_of(type)), kernels_(&select_isa_kernels()) {}

 protected:
  // The arguments of a gated op's product: `in` (X [M, K], score scale, the rule's
  // parameter, bias) times a K x N weight (set by the caller) into y, under `gating`.
  SparseMatMulArgs gated_args(const GatedInputs& in, Gating gating, int64_t K, int64_t N, void* y) const {
    GatingParams params;
    params.gating = gating;
    if (in.k != nullptr) params.k = *in.k;
    if (in.threshold != nullptr) params.threshold = *in.threshold;
    return SparseMatMulArgs{dtype_, in.x, /*b=*/nullptr, in.score_scale, in.bias, y, in.M, K, N, params};
  }
  // Computes args on ORT's intra-op thread pool of `context`.
  void run(const SparseMatMulArgs& args, OrtKernelContext* context) const {
    sparse_matmul(args, *kernels_, ParallelRunner{context, parallel_run});
  }

  DType dtype_;
  const IsaKernels* kernels_;
};

// The kernel of op Schema for the provider of Base (CpuKernelBase, CudaKernelBase): the
// node's label for errors and its attributes, read once when ORT creates the kernel
// (Schema::read_attributes). A kernel class derives from it and defines Compute.
template <typename S, typename Base>
class OpKernel : public Base {
 public:
  using Schema = S;
  OpKernel(const OrtKernelInfo* info, ONNXTensorElementDataType type)
      : Base(info, type), node_(node_label(info, Schema::kName)), attrs_(Schema::read_attributes(info, node_)) {}
  virtual ~OpKernel() = default;

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return compute_status(node_, [&] { Compute(context); });
  }

 protected:
  virtual void Compute(OrtKernelContext* context) = 0;

  const std::string node_;  // "<op> node 'name'" for error messages
  const typename Schema::Attributes attrs_;
};

}  // namespace wina

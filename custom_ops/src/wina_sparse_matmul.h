// The WinaSparseMatMul custom op (domain "ai.wina") for the CPU execution provider.
//
// The names and input positions mirror wina_onnx/schema.py; the NumPy oracle
// wina_onnx/reference.py is the specification of the result.
//
//   inputs:  0 X [..., K] (T)   1 B [K, N] (T)   2 score_scale [K] (float)
//            3 threshold (float scalar, optional)   4 k (int64 scalar, optional)
//            5 bias [N] (T, optional)
//   output:  Y [..., N] (T)      attribute: gating = "topk" | "threshold"
//   T in {float, float16, bfloat16}: one op object per type, all with the same
//   name, so that ONNX Runtime picks the kernel by the type of X.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include "isa/isa.h"
#include "ort_api.h"
#include "gating.h"
#include "tensor_checks.h"

namespace wina {

inline constexpr const char* kDomain = "ai.wina";
inline constexpr int kDomainVersion = 1;
inline constexpr const char* kOpType = "WinaSparseMatMul";

enum InputIndex : size_t {
  kInputX = 0,
  kInputB = 1,
  kInputScoreScale = 2,
  kInputThreshold = 3,
  kInputK = 4,
  kInputBias = 5,
  kNumInputs = 6,
};

inline constexpr const char* kAttrGating = "gating";
inline constexpr const char* kGatingTopK = "topk";
inline constexpr const char* kGatingThreshold = "threshold";

// The node's attribute, read once when the kernel is created (shared by the CPU and
// CUDA kernels). Throws InvalidArgument for a missing or unknown gating.
struct NodeConfig {
  Gating gating = Gating::kTopK;
  std::string node;  // "WinaSparseMatMul node 'name'" for error messages
};
NodeConfig read_node_config(const OrtKernelInfo* info);

// The inputs of one call, validated (types, ranks, shapes, scalars), in the flattened
// view X [M, K] x B [K, N]. Pointers are where ORT put the tensors: host memory for
// the CPU kernel, device memory for the CUDA kernel (threshold and k included).
struct OpInputs {
  const void* x = nullptr;
  const void* b = nullptr;
  const float* score_scale = nullptr;
  const float* threshold = nullptr;  // set for gating "threshold"
  const int64_t* k = nullptr;        // set for gating "topk"
  const void* bias = nullptr;        // or nullptr
  std::vector<int64_t> out_shape;    // [..., N]
  int64_t M = 0, K = 0, N = 0;
  int device_id = 0;                 // of X's memory
};
// Throws InvalidArgument naming the offending input.
OpInputs read_op_inputs(Ort::KernelContext& ctx, ONNXTensorElementDataType type, Gating gating);

// Inside a catch block: the current exception as an OrtStatus, prefixed with `node`.
OrtStatusPtr status_from_current_exception(const std::string& node);

// Input types and characteristics of the op's schema, shared by the op objects.
ONNXTensorElementDataType op_input_type(ONNXTensorElementDataType type, size_t index);
OrtCustomOpInputOutputCharacteristic op_input_characteristic(size_t index);

class WinaSparseMatMulKernel {
 public:
  WinaSparseMatMulKernel(const OrtKernelInfo* info, DType dtype);
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 private:
  void Compute(OrtKernelContext* context);

  DType dtype_;
  Gating gating_;
  std::string node_;  // "WinaSparseMatMul node 'name'" for error messages
  const IsaKernels* kernels_;
};

struct WinaSparseMatMulOp
    : Ort::CustomOpBase<WinaSparseMatMulOp, WinaSparseMatMulKernel, /*WithStatus=*/true> {
  explicit WinaSparseMatMulOp(ONNXTensorElementDataType type) : type_(type) {}

  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const;

  const char* GetName() const { return kOpType; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }

  size_t GetInputTypeCount() const { return kNumInputs; }
  ONNXTensorElementDataType GetInputType(size_t index) const;
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const;

  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t /*index*/) const { return type_; }

  // No InferOutputShape: the C++ helper cannot see the element type nor tell an
  // absent optional input from an unknown shape, and ORT runs fine without it.

 private:
  ONNXTensorElementDataType type_;
};

}  // namespace wina

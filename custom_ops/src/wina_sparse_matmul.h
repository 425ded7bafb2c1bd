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

#include <string>

#include "isa/isa.h"
#include "ort_api.h"
#include "gating.h"

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

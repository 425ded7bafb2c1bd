// The WinaSparseMatMulGroup custom op (domain "ai.wina"): several threshold-gated
// WinaSparseMatMul products that read the same X, in one node (q/k/v, gate/up).
//
// The names and input positions mirror wina_onnx/schema.py (GROUP_*); the NumPy oracle
// wina_onnx.reference.wina_sparse_matmul_group is the specification of the result.
//
//   inputs:  0 X [..., K] (T)   1 score_scale [S, K] (float)   2 threshold [S] (float)
//            3 ... (variadic, T): B_0 .. B_{S-1} ([K, N_s]), then optionally bias_0 .. bias_{S-1} ([N_s])
//   outputs: Y_0 .. Y_{S-1} ([..., N_s], T), variadic
//   Output s = WinaSparseMatMul(X, B_s, score_scale[s], threshold[s], bias_s), gating "threshold".
#pragma once

#include <string>
#include <vector>

#include "isa/isa.h"
#include "ort_api.h"
#include "tensor_checks.h"

namespace wina {

inline constexpr const char* kGroupOpType = "WinaSparseMatMulGroup";
inline constexpr size_t kGroupInputX = 0;
inline constexpr size_t kGroupInputScoreScale = 1;
inline constexpr size_t kGroupInputThreshold = 2;
inline constexpr size_t kGroupFirstWeight = 3;
// Most weights in one node: the CUDA kernel passes a table of this many by value.
inline constexpr int64_t kGroupMaxWeights = 8;

// The inputs of one call, validated; pointers are where ORT put the tensors (host or device).
struct GroupInputs {
  const void* x = nullptr;
  const float* score_scale = nullptr;  // [S, K]
  const float* threshold = nullptr;    // [S]
  std::vector<const void*> b;          // S weights [K, N_s]
  std::vector<const void*> bias;       // S biases, or empty
  std::vector<int64_t> n;              // N_s
  std::vector<int64_t> out_prefix;     // X's shape without the last axis
  int64_t M = 0, K = 0;
  int device_id = 0;
};
// Throws InvalidArgument naming the offending input.
GroupInputs read_group_inputs(Ort::KernelContext& ctx, ONNXTensorElementDataType type);

std::string group_node_label(const OrtKernelInfo* info);

class WinaSparseMatMulGroupKernel {
 public:
  WinaSparseMatMulGroupKernel(const OrtKernelInfo* info, ONNXTensorElementDataType type);
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 private:
  void Compute(OrtKernelContext* context);

  DType dtype_;
  std::string node_;
  const IsaKernels* kernels_;
};

// The op object for one element type and execution provider; Kernel is
// WinaSparseMatMulGroupKernel (CPU) or WinaSparseMatMulGroupCudaKernel, built from (info, type).
template <typename Kernel>
struct WinaSparseMatMulGroupOp
    : Ort::CustomOpBase<WinaSparseMatMulGroupOp<Kernel>, Kernel, /*WithStatus=*/true> {
  WinaSparseMatMulGroupOp(ONNXTensorElementDataType type, const char* provider) : type_(type), provider_(provider) {}

  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    try {
      *kernel = new Kernel(info, type_);
      return nullptr;
    } catch (const Ort::Exception& e) {
      return api.CreateStatus(e.GetOrtErrorCode(), (std::string(kGroupOpType) + ": " + e.what()).c_str());
    } catch (const std::exception& e) {
      return api.CreateStatus(ORT_FAIL, (std::string(kGroupOpType) + ": " + e.what()).c_str());
    }
  }

  const char* GetName() const { return kGroupOpType; }
  const char* GetExecutionProviderType() const { return provider_; }

  size_t GetInputTypeCount() const { return kGroupFirstWeight + 1; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return index == kGroupInputScoreScale || index == kGroupInputThreshold ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT
                                                                          : type_;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index == kGroupFirstWeight ? OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_VARIADIC
                                      : OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t /*index*/) const { return type_; }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t /*index*/) const {
    return OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_VARIADIC;
  }

 private:
  ONNXTensorElementDataType type_;
  const char* provider_;
};

}  // namespace wina

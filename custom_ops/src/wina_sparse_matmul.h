// The WinaSparseMatMul custom op (domain "ai.wina") for the CPU execution provider.
//
// Names and input positions: op_schema.h (mirroring wina_onnx/schema.py); the NumPy
// oracle wina_onnx/reference.py is the specification of the result.
// T in {float, float16, bfloat16}: one op object per type, all with the same name, so
// that ONNX Runtime picks the kernel by the type of X.
#pragma once

#include <string>
#include <vector>

#include "custom_op.h"
#include "gating.h"
#include "isa/isa.h"
#include "op_schema.h"
#include "ort_api.h"
#include "tensor_checks.h"

namespace wina {

// The inputs of one call, validated (types, ranks, shapes, scalars), in the flattened
// view X [M, K] x B [K, N]. Pointers are where ORT put the tensors: host memory for
// the CPU kernel, device memory for the CUDA kernel (threshold and k included).
struct OpInputs {
  const void* x = nullptr;
  const void* b = nullptr;
  const float* score_scale = nullptr;
  const float* threshold = nullptr;  // set for rules with GatingParam::kThreshold
  const int64_t* k = nullptr;        // set for rules with GatingParam::kK
  const void* bias = nullptr;        // or nullptr
  std::vector<int64_t> out_shape;    // [..., N]
  int64_t M = 0, K = 0, N = 0;
  int device_id = 0;                 // of X's memory
};
// Throws InvalidArgument naming the offending input.
OpInputs read_op_inputs(Ort::KernelContext& ctx, ONNXTensorElementDataType type, Gating gating);

class WinaSparseMatMulKernel : public CpuKernelBase {
 public:
  WinaSparseMatMulKernel(const OrtKernelInfo* info, ONNXTensorElementDataType type);

 private:
  void Compute(OrtKernelContext* context) override;

  Gating gating_;
};

template <typename Kernel>
using WinaSparseMatMulOp = CustomOp<SparseMatMulSchema, Kernel>;

}  // namespace wina

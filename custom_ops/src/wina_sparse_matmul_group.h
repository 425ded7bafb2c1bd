// The WinaSparseMatMulGroup custom op (domain "ai.wina"): several threshold-gated
// WinaSparseMatMul products that read the same X, in one node (q/k/v, gate/up).
//
// Names and input positions: op_schema.h (mirroring wina_onnx/schema.py, GROUP_*); the
// NumPy oracle wina_onnx.reference.wina_sparse_matmul_group is the specification.
// Output s = WinaSparseMatMul(X, B_s, score_scale[s], threshold[s], bias_s), gating "threshold".
#pragma once

#include <string>
#include <vector>

#include "custom_op.h"
#include "isa/isa.h"
#include "op_schema.h"
#include "ort_api.h"
#include "tensor_checks.h"

namespace wina {

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

class WinaSparseMatMulGroupKernel final : public OpKernel<SparseMatMulGroupSchema, CpuKernelBase> {
  using OpKernel::OpKernel;  // public, as the base's constructor
  void Compute(OrtKernelContext* context) override;
};

}  // namespace wina

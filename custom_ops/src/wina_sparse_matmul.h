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
// view X [M, K] x B [K, N].
struct OpInputs : GatedInputs {
  const void* b = nullptr;
  int64_t K = 0, N = 0;
};
// Throws InvalidArgument naming the offending input.
OpInputs read_op_inputs(Ort::KernelContext& ctx, ONNXTensorElementDataType type, Gating gating);

class WinaSparseMatMulKernel final : public OpKernel<SparseMatMulSchema, CpuKernelBase> {
  using OpKernel::OpKernel;  // public, as the base's constructor
  void Compute(OrtKernelContext* context) override;
};

}  // namespace wina

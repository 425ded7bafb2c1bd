// The WinaSparseMatMulNBits custom op (domain "ai.wina") for the CPU execution provider:
// WinaSparseMatMul over 4-bit block-quantized weights in the feature-major layout of
// docs/op-schema.md. Names and input positions: op_schema.h; the NumPy oracle
// wina_onnx.reference.wina_sparse_matmul_nbits is the specification of the result.
// T in {float, float16, bfloat16} (X, scales, float zero points, bias, Y): one op object
// per type, all with the same name.
#pragma once

#include <array>
#include <string>
#include <vector>

#include "custom_op.h"
#include "gating.h"
#include "isa/isa.h"
#include "isa/nbits_isa.h"
#include "op_schema.h"
#include "ort_api.h"
#include "tensor_checks.h"

namespace wina {

// The inputs of one call, validated against the node's attributes (types, ranks, the
// shapes of B, scales and zero points from K, N and block_size, scalars), in the
// flattened view X [M, K].
struct NBitsInputs : GatedInputs {
  const uint8_t* b = nullptr;            // [K, ceil(N/2)]
  const void* scales = nullptr;          // [ceil(K/G), N], T
  const void* zero_points = nullptr;     // or nullptr
  NbitsZeroPoints zero_kind = kZeroPointsNone;
};
// The inputs that are constant initializers (the weights, usually also k or threshold and
// bias), by input index, read once when a kernel is created; the others are absent here.
using NBitsConstantInputs = std::array<InputView, kNBitsNumInputs>;
NBitsConstantInputs read_nbits_constant_inputs(const OrtKernelInfo* info);

// Throws InvalidArgument naming the offending input. `constants` (or nullptr): inputs taken
// from there instead of the context; they are checked on every call all the same.
NBitsInputs read_nbits_inputs(Ort::KernelContext& ctx, ONNXTensorElementDataType type, const NBitsAttributes& attrs,
                              const NBitsConstantInputs* constants = nullptr);

// The weight as the CPU loops see it.
NbitsWeight nbits_weight(const NBitsInputs& in, const NBitsAttributes& attrs, DType dtype);

class WinaSparseMatMulNBitsKernel final : public OpKernel<NBitsSchema, CpuKernelBase> {
 public:
  WinaSparseMatMulNBitsKernel(const OrtKernelInfo* info, ONNXTensorElementDataType type);

 private:
  void Compute(OrtKernelContext* context) override;

  const NBitsConstantInputs constants_;
};

}  // namespace wina

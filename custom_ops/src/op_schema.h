// The ops of the library as ONNX Runtime sees them (domain "ai.wina"): names, input
// positions, attributes and how they are read. This header mirrors wina_onnx/schema.py
// constant for constant (INPUT_X -> kInputX, GROUP_INPUT_X -> kGroupInputX, NBITS_* ->
// kNBits*); docs/op-schema.md is the full specification, the NumPy oracle
// wina_onnx/reference.py the executable one.
//
// Each op also has a schema trait (SparseMatMulSchema, ...) that custom_op.h turns into
// the ORT op object: its name, input count, input types and characteristics.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "gating.h"
#include "ort_api.h"

namespace wina {

inline constexpr const char* kDomain = "ai.wina";
inline constexpr int kDomainVersion = 1;

inline constexpr const char* kAttrGating = "gating";

// An input of an op: its name, type and whether it may be absent (given as ""). kT is the
// element type of the op object; kChecked, a type the kernel checks on every call.
enum class InputType { kT, kFloat, kInt64, kUint8, kChecked };
struct InputSpec {
  const char* name;
  InputType type;
  bool optional;
};

// ---------------------------------------------------------------------------------
// WinaSparseMatMul
//   inputs:  0 X [..., K] (T)   1 B [K, N] (T)   2 score_scale [K] (float)
//            3 threshold (float scalar, optional)   4 k (int64 scalar, optional)
//            5 bias [N] (T, optional)
//   output:  Y [..., N] (T)      attribute: gating = "topk" | "threshold"
inline constexpr const char* kOpType = "WinaSparseMatMul";

enum InputIndex : size_t { kInputX, kInputB, kInputScoreScale, kInputThreshold, kInputK, kInputBias, kNumInputs };
inline constexpr InputSpec kInputs[kNumInputs] = {
    {"X", InputType::kT, false}, {"B", InputType::kT, false}, {"score_scale", InputType::kFloat, false},
    {"threshold", InputType::kFloat, true}, {"k", InputType::kInt64, true}, {"bias", InputType::kT, true}};

// ---------------------------------------------------------------------------------
// WinaSparseMatMulGroup: several threshold-gated products that read the same X.
//   inputs:  0 X [..., K] (T)   1 score_scale [S, K] (float)   2 threshold [S] (float)
//            3 ... (variadic, T): B_0 .. B_{S-1} ([K, N_s]), then optionally bias_0 .. bias_{S-1}
//   outputs: Y_0 .. Y_{S-1} ([..., N_s], T), variadic
inline constexpr const char* kGroupOpType = "WinaSparseMatMulGroup";
inline constexpr size_t kGroupInputX = 0;
inline constexpr size_t kGroupInputScoreScale = 1;
inline constexpr size_t kGroupInputThreshold = 2;
inline constexpr size_t kGroupFirstWeight = 3;
// Most weights in one node: the CUDA kernel passes a table of this many by value.
inline constexpr int64_t kGroupMaxWeights = 8;

// ---------------------------------------------------------------------------------
// WinaSparseMatMulNBits: WinaSparseMatMul over 4-bit block-quantized weights, stored
// feature-major (input feature i's codes are one contiguous row).
//   inputs:  0 X [..., K] (T)   1 B uint8 [K, ceil(N/2)]   2 scales T [ceil(K/G), N]
//            3 zero_points: uint8 [ceil(K/G), ceil(N/2)] or T [ceil(K/G), N] (optional; absent = 8)
//            4 score_scale float [K]   5 threshold float []   6 k int64 []   7 bias T [N]
//   attributes: gating, K, N, bits (4), block_size (G), accuracy_level
inline constexpr const char* kNBitsOpType = "WinaSparseMatMulNBits";

enum NBitsInputIndex : size_t {
  kNBitsInputX, kNBitsInputB, kNBitsInputScales, kNBitsInputZeroPoints, kNBitsInputScoreScale,
  kNBitsInputThreshold, kNBitsInputK, kNBitsInputBias, kNBitsNumInputs
};
inline constexpr InputSpec kNBitsInputs[kNBitsNumInputs] = {
    {"X", InputType::kT, false}, {"B", InputType::kUint8, false}, {"scales", InputType::kT, false},
    {"zero_points", InputType::kChecked, true},  // uint8 or T
    {"score_scale", InputType::kFloat, false}, {"threshold", InputType::kFloat, true},
    {"k", InputType::kInt64, true}, {"bias", InputType::kT, true}};
inline constexpr const char* kNBitsAttrK = "K";
inline constexpr const char* kNBitsAttrN = "N";
inline constexpr const char* kNBitsAttrBits = "bits";
inline constexpr const char* kNBitsAttrBlockSize = "block_size";
inline constexpr const char* kNBitsAttrAccuracyLevel = "accuracy_level";
inline constexpr int64_t kNBitsBits = 4;
inline constexpr int64_t kNBitsDefaultZeroPoint = 8;

// ---------------------------------------------------------------------------------
// Gating parameters: the input each op reads for a rule's parameter (gating.h).
constexpr size_t gating_param_input(GatingParam param) {
  return param == GatingParam::kK ? kInputK : kInputThreshold;
}
constexpr size_t nbits_gating_param_input(GatingParam param) {
  return param == GatingParam::kK ? kNBitsInputK : kNBitsInputThreshold;
}

// ---------------------------------------------------------------------------------
// Attribute reading, once when a kernel is created (op_schema.cc).

// "<op_type> node '<name>'", the prefix of the node's error messages.
std::string node_label(const OrtKernelInfo* info, const char* op_type);

// The node's `gating` attribute; throws InvalidArgument (prefixed with `node`) when it is
// missing or names no rule of kGatingRules.
Gating read_gating(const OrtKernelInfo* info, const std::string& node);

// The rule of kGatingRules for `gating`.
const GatingRule& gating_rule(Gating gating);

// WinaSparseMatMulNBits' attributes, checked (bits = 4, block_size a power of two >= 16,
// K and N >= 0, accuracy_level in 0..4); throws InvalidArgument prefixed with `node`.
struct NBitsAttributes {
  Gating gating = Gating::kTopK;
  int64_t K = 0, N = 0, block_size = 0, accuracy_level = 0;
};
NBitsAttributes read_nbits_attributes(const OrtKernelInfo* info, const std::string& node);

// The attributes of an op without any (WinaSparseMatMulGroup: its gating is threshold).
struct NoAttributes {};

// ---------------------------------------------------------------------------------
// Schema traits for CustomOp<Schema, Kernel> and OpKernel<Schema, Base> (custom_op.h):
// the op's name, input count, input types and characteristics, output characteristic, and
// its Attributes, which read_attributes reads once per node. T is the element type the op
// object is registered for (one object per type, all with the same name).

// The trait of an op with the fixed inputs `Inputs` and one output.
template <const char* const& Name, size_t Count, const InputSpec (&Inputs)[Count], typename Attrs,
          Attrs (*Read)(const OrtKernelInfo*, const std::string&)>
struct FixedInputsSchema {
  static constexpr const char* kName = Name;
  static constexpr size_t kInputCount = Count;
  static constexpr OrtCustomOpInputOutputCharacteristic kOutputCharacteristic =
      OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED;
  using Attributes = Attrs;
  static Attributes read_attributes(const OrtKernelInfo* info, const std::string& node) { return Read(info, node); }
  static ONNXTensorElementDataType input_type(size_t index, ONNXTensorElementDataType t) {
    switch (Inputs[index].type) {
      case InputType::kT: return t;
      case InputType::kFloat: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
      case InputType::kInt64: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
      case InputType::kUint8: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
      default: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    }
  }
  static OrtCustomOpInputOutputCharacteristic input_characteristic(size_t index) {
    return Inputs[index].optional ? OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_OPTIONAL
                                  : OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED;
  }
};

using SparseMatMulSchema = FixedInputsSchema<kOpType, kNumInputs, kInputs, Gating, read_gating>;
using NBitsSchema =
    FixedInputsSchema<kNBitsOpType, kNBitsNumInputs, kNBitsInputs, NBitsAttributes, read_nbits_attributes>;

struct SparseMatMulGroupSchema {
  static constexpr const char* kName = kGroupOpType;
  static constexpr size_t kInputCount = kGroupFirstWeight + 1;  // the last one is variadic
  static constexpr OrtCustomOpInputOutputCharacteristic kOutputCharacteristic =
      OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_VARIADIC;
  using Attributes = NoAttributes;
  static Attributes read_attributes(const OrtKernelInfo*, const std::string&) { return {}; }
  static ONNXTensorElementDataType input_type(size_t index, ONNXTensorElementDataType t) {
    return index == kGroupInputScoreScale || index == kGroupInputThreshold ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : t;
  }
  static OrtCustomOpInputOutputCharacteristic input_characteristic(size_t index) {
    return index == kGroupFirstWeight ? OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_VARIADIC
                                      : OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED;
  }
};

}  // namespace wina

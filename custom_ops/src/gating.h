// The gating rules of WinaSparseMatMul: which input features of one token are kept.
// One enum for the CPU driver, the per-ISA loops and the CUDA kernels; plain data only,
// so that every compiler of the library (host C++, each -m flag set, nvcc) can include it.
//
//   score[i] = |x[i]| * score_scale[i], computed in float32; NaN scores rank as +inf.
//   threshold: keep score[i] > threshold.
//   topk:      keep the k largest scores; among equal scores the lower index wins
//              (the order (score descending, index ascending)), k clipped to [0, K].
// The NumPy oracle wina_onnx.reference.keep_mask is the specification. The rule itself
// is written once per back end: isa/gating_impl.h (CPU) and cuda/gating.cuh (CUDA).
#pragma once

#include <cstdint>

namespace wina {

// The node's `gating` attribute. The values are part of no file format; they only
// index kGatingRules below.
enum class Gating : int32_t { kThreshold = 0, kTopK = 1 };

// The scalar input a rule reads (op_schema.h maps it to each op's input index).
enum class GatingParam : int32_t { kThreshold, kK };

struct GatingRule {
  Gating gating;
  const char* name;   // the attribute's value, as in wina_onnx/schema.py (GATING_*)
  GatingParam param;
};

// Every rule, in the order of the error message that lists them.
inline constexpr GatingRule kGatingRules[] = {
    {Gating::kTopK, "topk", GatingParam::kK},
    {Gating::kThreshold, "threshold", GatingParam::kThreshold},
};

// The rule and its parameter for one call (host values: the CPU kernels).
struct GatingParams {
  Gating gating = Gating::kTopK;
  float threshold = 0.0f;  // GatingParam::kThreshold rules
  int64_t k = 0;           // GatingParam::kK rules (any value; clipped to [0, K])
};

}  // namespace wina

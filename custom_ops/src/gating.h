// Gating of WinaSparseMatMul: which input features of one token are kept.
//
//   score[i] = |x[i]| * score_scale[i], computed in float32; NaN scores rank as +inf.
//   threshold: keep score[i] > threshold.
//   topk:      keep the k largest scores; among equal scores the lower index wins
//              (the order (score descending, index ascending)), k clipped to [0, K].
// The NumPy oracle wina_onnx.reference.keep_mask is the specification. The inner
// loops (including the O(K) top-k selection) are in isa/gating_impl.h, compiled
// per instruction set.
#pragma once

#include <cstdint>

#include "isa/isa.h"

namespace wina {

enum class Gating { kTopK, kThreshold };

struct GatingParams {
  Gating mode = Gating::kTopK;
  float threshold = 0.0f;  // used when mode == kThreshold
  int64_t k = 0;           // used when mode == kTopK (any value; clipped to [0, K])
};

// Lists the kept features of one token in increasing index order: idx[c] = i and
// val[c] = x[i] (x already widened to float32); returns their count. idx and val
// need room for K + 16 entries. Thread-safe (per-thread work space).
int64_t gate_token(const IsaKernels& kernels, const float* x, const float* score_scale, int64_t K,
                   const GatingParams& params, int32_t* idx, float* val);

}  // namespace wina

// Gating of WinaSparseMatMul: which input features of one token are kept.
//
//   score[i] = |x[i]| * score_scale[i], computed in float32; NaN scores rank as +inf.
//   threshold: keep score[i] > threshold.
//   topk:      keep the k largest scores; among equal scores the lower index wins
//              (the order (score descending, index ascending)), k clipped to [0, K].
// The NumPy oracle wina_onnx.reference.keep_mask is the specification.
#pragma once

#include <cstdint>

namespace wina {

enum class Gating { kTopK, kThreshold };

struct GatingParams {
  Gating mode = Gating::kTopK;
  float threshold = 0.0f;  // used when mode == kThreshold
  int64_t k = 0;           // used when mode == kTopK (any value; clipped to [0, K])
};

// Writes keep[i] in {0, 1} for i < K and returns how many features are kept.
// x is the token's input already widened to float32. Thread-safe.
int64_t gate_row(const float* x, const float* score_scale, int64_t K, const GatingParams& params,
                 uint8_t* keep);

}  // namespace wina

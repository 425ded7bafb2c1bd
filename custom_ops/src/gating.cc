#include "gating.h"

#include <cstddef>
#include <vector>

namespace wina {

namespace {

// Grow-only work space of the calling thread (ORT's pool threads live as long as
// the session, so this is allocated once per thread and size).
struct GateBuffers {
  std::vector<uint32_t> keys;
  std::vector<int32_t> candidates;
  std::vector<uint64_t> ranks;
  std::vector<uint32_t> hist;
};

GateScratch scratch_for(int64_t K) {
  thread_local GateBuffers b;
  const size_t n = static_cast<size_t>(K) + 16;
  if (b.keys.size() < n) {
    b.keys.resize(n);
    b.candidates.resize(n);
    b.ranks.resize(n);
  }
  b.hist.resize(2048);
  return GateScratch{b.keys.data(), b.candidates.data(), b.ranks.data(), b.hist.data()};
}

}  // namespace

int64_t gate_token(const IsaKernels& kernels, const float* x, const float* score_scale, int64_t K,
                   const GatingParams& params, int32_t* idx, float* val) {
  const bool topk = params.mode == Gating::kTopK;
  return kernels.gate(x, score_scale, K, topk ? 1 : 0, params.threshold, params.k, scratch_for(K), idx, val);
}

}  // namespace wina

// gate_token (sparse_kernel.h): the CPU gating of one token, over the per-ISA loops.
#include "sparse_kernel.h"

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
  return kernels.gate(x, score_scale, K, params, scratch_for(K), idx, val);
}

}  // namespace wina

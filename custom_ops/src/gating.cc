#include "gating.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace wina {

namespace {

inline float score_of(float x, float scale) {
  const float s = std::fabs(x) * scale;
  return std::isnan(s) ? std::numeric_limits<float>::infinity() : s;
}

// Maps a float to an unsigned key with the same order (NaN never occurs here);
// -0 and +0 are equal scores, so both map to the key of +0.
inline uint32_t order_key(float s) {
  if (s == 0.0f) s = 0.0f;
  uint32_t u;
  std::memcpy(&u, &s, sizeof u);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

int64_t gate_threshold(const float* x, const float* scale, int64_t K, float threshold,
                       uint8_t* keep) {
  int64_t kept = 0;
  for (int64_t i = 0; i < K; ++i) {
    const uint8_t on = score_of(x[i], scale[i]) > threshold ? 1 : 0;
    keep[i] = on;
    kept += on;
  }
  return kept;
}

// Top-k by radix selection on the order keys, most significant byte first: finds
// the k-th largest key `cutoff` and how many of the keys equal to it are taken
// (the lowest indices), in O(K) without sorting.
int64_t gate_topk(const float* x, const float* scale, int64_t K, int64_t k, uint8_t* keep) {
  const int64_t kk = k < 0 ? 0 : (k > K ? K : k);
  if (kk == 0 || kk == K) {
    std::memset(keep, kk == K ? 1 : 0, static_cast<size_t>(K));
    return kk;
  }
  thread_local std::vector<uint32_t> keys;
  thread_local std::vector<int32_t> candidates;
  keys.resize(static_cast<size_t>(K));
  candidates.resize(static_cast<size_t>(K));
  for (int64_t i = 0; i < K; ++i) keys[i] = order_key(score_of(x[i], scale[i]));

  int64_t need = kk;   // how many of the remaining candidates are still to take
  uint32_t prefix = 0;  // the bytes of the cutoff found so far
  int64_t num_candidates = K;
  bool all = true;      // candidates are still all of [0, K)
  for (int shift = 24; shift >= 0; shift -= 8) {
    int64_t hist[256] = {0};
    if (all) {
      for (int64_t i = 0; i < K; ++i) ++hist[keys[i] >> shift];
    } else {
      for (int64_t c = 0; c < num_candidates; ++c) ++hist[(keys[candidates[c]] >> shift) & 0xffu];
    }
    int bucket = 255;
    int64_t above = 0;
    for (; bucket > 0; --bucket) {
      if (above + hist[bucket] >= need) break;
      above += hist[bucket];
    }
    need -= above;
    prefix |= static_cast<uint32_t>(bucket) << shift;
    // Keep only the candidates whose bytes so far equal the cutoff's.
    const uint32_t mask = ~0u << shift;
    int64_t n = 0;
    if (all) {
      for (int64_t i = 0; i < K; ++i)
        if ((keys[i] & mask) == prefix) candidates[n++] = static_cast<int32_t>(i);
    } else {
      for (int64_t c = 0; c < num_candidates; ++c)
        if ((keys[candidates[c]] & mask) == prefix) candidates[n++] = candidates[c];
    }
    num_candidates = n;
    all = false;
  }
  // Keys above the cutoff are kept; of those equal to it, the first `need` by index.
  const uint32_t cutoff = prefix;
  int64_t ties = need;
  for (int64_t i = 0; i < K; ++i) {
    const uint32_t key = keys[i];
    uint8_t on = key > cutoff ? 1 : 0;
    if (key == cutoff && ties > 0) {
      on = 1;
      --ties;
    }
    keep[i] = on;
  }
  return kk;
}

}  // namespace

int64_t gate_row(const float* x, const float* score_scale, int64_t K, const GatingParams& params,
                 uint8_t* keep) {
  if (params.mode == Gating::kThreshold) return gate_threshold(x, score_scale, K, params.threshold, keep);
  return gate_topk(x, score_scale, K, params.k, keep);
}

}  // namespace wina

// Gating inner loops (scores, threshold, top-k selection, the list of kept
// features), compiled per instruction set as part of kernels_impl.h.
//
// Top-k: each feature has a 64-bit rank
//   rank[i] = key(score[i]) << 32 | (2^32 - 1 - i),
// where key() maps floats to unsigned integers in the same order (-0 and +0 equal,
// NaN scores already turned into +inf). Ranks are distinct and ordered exactly as
// (score descending, index ascending), so the kept set is {i : rank[i] >= R}, R the
// k-th largest rank. R is found in O(K) without sorting: a histogram of the top 11
// key bits finds the bucket holding it, a histogram of the next 8 bits of the keys
// in that bucket narrows it further, and a quickselect over the few ranks left
// picks R exactly.
#pragma once

#include <cstdint>

#include "../half_bits.h"
#include "isa.h"

namespace wina {
namespace {

static inline float gate_score(float x, float scale) {
  const float s = __builtin_fabsf(x) * scale;
  return s != s ? __builtin_inff() : s;
}

static inline uint32_t gate_key(float s) {
  const uint32_t u = float_to_bits(s) & (s == 0.0f ? 0u : ~0u);  // -0 -> +0
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static inline uint64_t gate_rank(uint32_t key, int64_t i) {
  return (static_cast<uint64_t>(key) << 32) | (0xffffffffu - static_cast<uint32_t>(i));
}

// The pos-th largest (0-based) of v[0:n], by quickselect (v is reordered).
static uint64_t select_descending(uint64_t* v, int64_t n, int64_t pos) {
  int64_t lo = 0, hi = n - 1;
  while (hi > lo) {
    if (hi - lo < 16) {  // insertion sort, descending
      for (int64_t i = lo + 1; i <= hi; ++i) {
        const uint64_t t = v[i];
        int64_t j = i - 1;
        while (j >= lo && v[j] < t) {
          v[j + 1] = v[j];
          --j;
        }
        v[j + 1] = t;
      }
      return v[pos];
    }
    // Median of three, ordered in place (v[lo] >= v[mid] >= v[hi]); the middle
    // element's value is the pivot of a Hoare partition: [lo, j] >= pivot >= [j+1, hi].
    const int64_t mid = lo + (hi - lo) / 2;
    if (v[lo] < v[mid]) { const uint64_t t = v[lo]; v[lo] = v[mid]; v[mid] = t; }
    if (v[mid] < v[hi]) { const uint64_t t = v[mid]; v[mid] = v[hi]; v[hi] = t; }
    if (v[lo] < v[mid]) { const uint64_t t = v[lo]; v[lo] = v[mid]; v[mid] = t; }
    const uint64_t pivot = v[mid];
    int64_t i = lo - 1, j = hi + 1;
    for (;;) {
      do ++i; while (v[i] > pivot);
      do --j; while (v[j] < pivot);
      if (i >= j) break;
      const uint64_t t = v[i];
      v[i] = v[j];
      v[j] = t;
    }
    if (pos <= j) hi = j; else lo = j + 1;
  }
  return v[pos];
}

// Writes the features with keep(i) to idx/val in index order; returns the count.
// keep(i, key) is given the index and (top-k) the key.
#if defined(__AVX512F__)
template <bool kTopK>
static inline int64_t compress_kept(const float* x, const float* scale, const uint32_t* keys, int64_t K,
                                    float threshold, uint32_t cut_key, uint32_t cut_index,
                                    int32_t* idx, float* val) {
  int64_t count = 0;
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512 inf = _mm512_set1_ps(__builtin_inff());
  const __m512 thr = _mm512_set1_ps(threshold);
  const __m512i ckey = _mm512_set1_epi32(static_cast<int32_t>(cut_key));
  const __m512i cidx = _mm512_set1_epi32(static_cast<int32_t>(cut_index));
  const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  for (int64_t i = 0; i < K; i += 16) {
    const int64_t rest = K - i;
    const __mmask16 in = rest >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << rest) - 1u);
    const __m512i vi = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(i)), lane);
    const __m512 vx = _mm512_maskz_loadu_ps(in, x + i);
    __mmask16 m;
    if (kTopK) {
      const __m512i vk = _mm512_maskz_loadu_epi32(in, keys + i);
      m = _mm512_cmpgt_epu32_mask(vk, ckey) |
          (_mm512_cmpeq_epi32_mask(vk, ckey) & _mm512_cmple_epu32_mask(vi, cidx));
    } else {
      __m512 s = _mm512_mul_ps(_mm512_and_ps(vx, abs_mask), _mm512_maskz_loadu_ps(in, scale + i));
      s = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(s, s, _CMP_UNORD_Q), s, inf);
      m = _mm512_cmp_ps_mask(s, thr, _CMP_GT_OQ);
    }
    m &= in;
    _mm512_storeu_si512(idx + count, _mm512_maskz_compress_epi32(m, vi));
    _mm512_storeu_ps(val + count, _mm512_maskz_compress_ps(m, vx));
    count += __builtin_popcount(static_cast<unsigned>(m));
  }
  return count;
}
#else
template <bool kTopK>
static inline int64_t compress_kept(const float* x, const float* scale, const uint32_t* keys, int64_t K,
                                    float threshold, uint32_t cut_key, uint32_t cut_index,
                                    int32_t* idx, float* val) {
  int64_t count = 0;
  for (int64_t i = 0; i < K; ++i) {
    bool on;
    if (kTopK) {
      on = keys[i] > cut_key || (keys[i] == cut_key && static_cast<uint32_t>(i) <= cut_index);
    } else {
      on = gate_score(x[i], scale[i]) > threshold;
    }
    idx[count] = static_cast<int32_t>(i);
    val[count] = x[i];
    count += on;
  }
  return count;
}
#endif

static int64_t gate_topk(const float* x, const float* scale, int64_t K, int64_t k, const GateScratch& s,
                         int32_t* idx, float* val) {
  const int64_t kk = k < 0 ? 0 : (k > K ? K : k);
  if (kk == 0) return 0;
  if (kk == K) {
    for (int64_t i = 0; i < K; ++i) {
      idx[i] = static_cast<int32_t>(i);
      val[i] = x[i];
    }
    return K;
  }
  uint32_t* keys = s.keys;
  uint32_t* hist = s.hist;
  int32_t* cand = s.candidates;
  // In a model the weights streamed since the last call have pushed this work space
  // out of the caches: ask for all of it at once rather than miss by miss.
  for (int64_t i = 0; i < K; i += 16) {
    __builtin_prefetch(keys + i, 1);
    __builtin_prefetch(cand + i, 1);
    __builtin_prefetch(x + i);
  }
  for (int b = 0; b < 2048; b += 16) __builtin_prefetch(hist + b, 1);

  uint32_t max_key = 0;
  for (int64_t i = 0; i < K; ++i) {
    const uint32_t key = gate_key(gate_score(x[i], scale[i]));
    keys[i] = key;
    max_key = key > max_key ? key : max_key;
  }

  // Level 1: the top 11 bits of the keys.
  for (int b = 0; b < 2048; ++b) hist[b] = 0;
  for (int64_t i = 0; i < K; ++i) ++hist[keys[i] >> 21];
  int64_t need = kk;  // ranks still to take among the candidates
  uint32_t bucket = max_key >> 21;
  for (; bucket > 0 && hist[bucket] < need; --bucket) need -= hist[bucket];
  int64_t n = 0;
  for (int64_t i = 0; i < K; ++i) {
    cand[n] = static_cast<int32_t>(i);
    n += (keys[i] >> 21) == bucket;
  }

  // Level 2: the next 8 bits, over the candidates only.
  for (int b = 0; b < 256; ++b) hist[b] = 0;
  for (int64_t c = 0; c < n; ++c) ++hist[(keys[cand[c]] >> 13) & 0xffu];
  uint32_t digit = 255;
  for (; digit > 0 && hist[digit] < need; --digit) need -= hist[digit];
  int64_t m = 0;
  uint64_t* ranks = s.ranks;
  for (int64_t c = 0; c < n; ++c) {
    const int32_t i = cand[c];
    ranks[m] = gate_rank(keys[i], i);
    m += ((keys[i] >> 13) & 0xffu) == digit;
  }

  // The need-th largest rank among the rest is the cutoff (1 <= need <= m).
  const uint64_t cutoff = select_descending(ranks, m, need - 1);
  const uint32_t cut_key = static_cast<uint32_t>(cutoff >> 32);
  const uint32_t cut_index = 0xffffffffu - static_cast<uint32_t>(cutoff);
  return compress_kept<true>(x, scale, keys, K, 0.0f, cut_key, cut_index, idx, val);
}

// One branch per gating rule (gating.h).
static int64_t gate_impl(const float* x, const float* scale, int64_t K, const GatingParams& params,
                         const GateScratch& s, int32_t* idx, float* val) {
  switch (params.gating) {
    case Gating::kThreshold: return compress_kept<false>(x, scale, nullptr, K, params.threshold, 0, 0, idx, val);
    case Gating::kTopK: return gate_topk(x, scale, K, params.k, s, idx, val);
  }
  return 0;
}

}  // namespace
}  // namespace wina

// The gating rules (gating.h) on the device, shared by the decode, prefill and top-k
// kernels. Every rule becomes, per token m, a pair (key_m, cut_m) and the same test
//   keep(i) = key(score_i) > key_m  ||  (key(score_i) == key_m && i <= cut_m)
// where key() maps a float score (NaN -> +inf, -0 -> +0) to an unsigned integer of the same
// order. threshold: key_m = key(threshold), cut_m = -1, computed inside the kernels; topk: the
// select kernel (topk_select.cu) finds the k-th score and the last index kept among ties.
#pragma once

#include <cstdint>
#include <type_traits>

#include "cuda/common.cuh"
#include "gating.h"

// Every gating rule: X(T, G) once per element type T and rule G (explicit instantiations).
#define WINA_CUDA_FOR_EACH_GATING(X, T) X(T, Gating::kThreshold) X(T, Gating::kTopK)

namespace wina {
namespace cuda {

// An unsigned key with the order of the float scores: NaN ranks as +inf and -0 ties +0.
__device__ __forceinline__ uint32_t order_key(float s) {
  uint32_t u = __float_as_uint(s);
  if (s != s) u = 0x7f800000u;
  if (u == 0x80000000u) u = 0u;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ uint32_t score_key(float x, float scale) { return order_key(fabsf(x) * scale); }

// Per-token rule keep(i) = key_i > key || (key_i == key && i <= cut).
struct Gate {
  const float* threshold;  // kThreshold: the scalar
  const uint32_t* keys;    // kTopK: per token, from the select kernel (topk_select.cu)
  const int32_t* cuts;
};

// Token m's (key, cut) under rule GATING; GateT is Gate or another struct with its fields.
template <Gating GATING, typename GateT>
__device__ __forceinline__ void token_gate(const GateT& gate, int m, uint32_t& key, int& cut) {
  if (GATING == Gating::kThreshold) {
    const float t = *gate.threshold;
    key = (t != t) ? 0xffffffffu : order_key(t);  // a NaN threshold keeps nothing
    cut = -1;
  } else {
    key = gate.keys[m];
    cut = gate.cuts[m];
  }
}

// The (key, cut) of tokens 0 .. MT - 1 of a kernel that serves M of them; a token past M
// keeps nothing.
template <Gating GATING, int MT, typename GateT>
__device__ __forceinline__ void token_gates(const GateT& gate, int M, uint32_t (&key)[MT], int (&cut)[MT]) {
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    if (m < M) {
      token_gate<GATING>(gate, m, key[m], cut[m]);
    } else {
      key[m] = 0xffffffffu;
      cut[m] = -1;
    }
  }
}

__device__ __forceinline__ bool keep(uint32_t key, int i, uint32_t gate_key, int gate_cut) {
  return key > gate_key || (key == gate_key && i <= gate_cut);
}

// Row r of a slab for MT tokens (M of them real; in_slab: r is a row of the slab): xv[m] = the
// token's x (xs[m], as float) where token m keeps the row, else 0. Returns whether any keeps it.
template <int MT>
__device__ __forceinline__ bool gate_row(const float (&xs)[MT], float scale, int r, bool in_slab, int M,
                                         const uint32_t (&gate_key)[MT], const int (&gate_cut)[MT], float (&xv)[MT]) {
  bool any = false;
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    xv[m] = 0.0f;
    if (m < M && in_slab) {
      const float xf = xs[m];
      if (keep(score_key(xf, scale), r, gate_key[m], gate_cut[m])) {
        xv[m] = xf;
        any = true;
      }
    }
  }
  return any;
}

// Gates a slab of rows [r0, r1) for MT tokens and lists the rows that any token keeps, in row
// order. Round q gives thread tid row r0 + q * THREADS + tid, its x for every token in xs[q] and its
// score scale in sc[q]; place(pos, r, xv) stores kept row r at list position pos with its gated x.
// Returns the length of the list; every round ends with a block sync.
template <int THREADS, int ROWS, int MT, typename Place>
__device__ __forceinline__ int compact_slab(const float (&xs)[ROWS][MT], const float (&sc)[ROWS], int r0, int r1,
                                            int M, const uint32_t (&gate_key)[MT], const int (&gate_cut)[MT],
                                            int tid, int lane, int warp, int* s_warp_count, Place&& place) {
  int count = 0;
#pragma unroll
  for (int q = 0; q < ROWS; ++q) {
    const int rb = r0 + q * THREADS;
    if (rb >= r1) break;  // uniform over the block
    const int r = rb + tid;
    float xv[MT];
    const bool any = gate_row(xs[q], sc[q], r, r < r1, M, gate_key, gate_cut, xv);
    count += block_compact<THREADS>(any, count, lane, warp, s_warp_count, [&](int pos) { place(pos, r, xv); });
    __syncthreads();
  }
  return count;
}

// Calls fn(std::integral_constant<Gating, G>{}) for the rule G == gating: a kernel template
// per rule, chosen at run time.
template <typename Fn>
cudaError_t with_gating(Gating gating, Fn&& fn) {
  switch (gating) {
    case Gating::kThreshold: return fn(std::integral_constant<Gating, Gating::kThreshold>{});
    case Gating::kTopK: return fn(std::integral_constant<Gating, Gating::kTopK>{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace wina

// Inner loops of WinaSparseMatMul, compiled once per instruction set.
//
// Included by exactly one of isa_generic.cc / isa_avx2.cc / isa_avx512.cc, after
// that file has chosen its compiler flags. Everything here has internal linkage
// (an anonymous namespace and `static inline`), so the copies built for different
// instruction sets can never be merged by the linker. Use no C++ library templates
// here for the same reason: their out-of-line copies would be shared.
//
// The tuning constants WINA_TILE_STRIDE (tokens per prefill tile) and WINA_TILE_NV
// (vectors per prefill micro-block row) are defined by the including file.
#pragma once

#include <cstdint>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "../half_bits.h"
#include "isa.h"

#ifndef WINA_TILE_STRIDE
#error "define WINA_TILE_STRIDE before including kernels_impl.h"
#endif
#ifndef WINA_TILE_NV
#error "define WINA_TILE_NV before including kernels_impl.h"
#endif

namespace wina {
namespace {

// ---------------------------------------------------------------------------
// A minimal vector layer: vf holds VW floats.
#if defined(__AVX512F__) || defined(__AVX2__)
// AVX-512 and AVX2 share one list of wrappers: only the register width differs. WINA_MM(op) names
// the full-width intrinsic; WINA_HALF_LOADU loads VW 16-bit values into a half-width register.
#if defined(__AVX2__) && !defined(__AVX512F__) && (!defined(__FMA__) || !defined(__F16C__))
#error "the AVX2 kernels are built with -mfma -mf16c"
#endif
#if defined(__AVX512F__)
using vf = __m512;
#define WINA_MM(op) _mm512_##op
#define WINA_HALF_LOADU(p) _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
#define WINA_CAST_PS _mm512_castsi512_ps
#else
using vf = __m256;
#define WINA_MM(op) _mm256_##op
#define WINA_HALF_LOADU(p) _mm_loadu_si128(reinterpret_cast<const __m128i*>(p))
#define WINA_CAST_PS _mm256_castsi256_ps
#endif
constexpr int VW = sizeof(vf) / sizeof(float);
static inline vf v_zero() { return WINA_MM(setzero_ps)(); }
static inline vf v_bcast(float x) { return WINA_MM(set1_ps)(x); }
static inline vf v_fma(vf a, vf b, vf c) { return WINA_MM(fmadd_ps)(a, b, c); }
static inline vf v_loadu(const float* p) { return WINA_MM(loadu_ps)(p); }
static inline void v_storeu(float* p, vf v) { WINA_MM(storeu_ps)(p, v); }
static inline vf v_load_f16(const uint16_t* p) { return WINA_MM(cvtph_ps)(WINA_HALF_LOADU(p)); }
static inline vf v_load_bf16(const uint16_t* p) {
  const auto w = WINA_MM(cvtepu16_epi32)(WINA_HALF_LOADU(p));
  return WINA_CAST_PS(WINA_MM(slli_epi32)(w, 16));
}
#undef WINA_MM
#undef WINA_HALF_LOADU
#undef WINA_CAST_PS
#elif defined(__SSE2__)  // part of every x86-64 CPU
constexpr int VW = 4;
using vf = __m128;
static inline vf v_zero() { return _mm_setzero_ps(); }
static inline vf v_bcast(float x) { return _mm_set1_ps(x); }
static inline vf v_fma(vf a, vf b, vf c) { return _mm_add_ps(_mm_mul_ps(a, b), c); }
static inline vf v_loadu(const float* p) { return _mm_loadu_ps(p); }
static inline void v_storeu(float* p, vf v) { _mm_storeu_ps(p, v); }
static inline vf v_load_f16(const uint16_t* p) {
  return _mm_setr_ps(half_bits_to_float(p[0]), half_bits_to_float(p[1]),
                     half_bits_to_float(p[2]), half_bits_to_float(p[3]));
}
static inline vf v_load_bf16(const uint16_t* p) {
  const __m128i h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return _mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), h));
}
#else  // portable scalar fallback (non-x86 builds); the compiler may still vectorise
constexpr int VW = 1;
using vf = float;
static inline vf v_zero() { return 0.0f; }
static inline vf v_bcast(float x) { return x; }
static inline vf v_fma(vf a, vf b, vf c) { return a * b + c; }
static inline vf v_loadu(const float* p) { return *p; }
static inline void v_storeu(float* p, vf v) { *p = v; }
static inline vf v_load_f16(const uint16_t* p) { return half_bits_to_float(*p); }
static inline vf v_load_bf16(const uint16_t* p) { return bf16_bits_to_float(*p); }
#endif

// Load VW elements of B at element offset `off`, widened to float.
template <int DT>
static inline vf load_b(const void* b, int64_t off) {
  if (DT == kFloat32) return v_loadu(static_cast<const float*>(b) + off);
  if (DT == kFloat16) return v_load_f16(static_cast<const uint16_t*>(b) + off);
  return v_load_bf16(static_cast<const uint16_t*>(b) + off);
}

template <int DT>
static inline float load_b_scalar(const void* b, int64_t off) {
  if (DT == kFloat32) return static_cast<const float*>(b)[off];
  if (DT == kFloat16) return half_bits_to_float(static_cast<const uint16_t*>(b)[off]);
  return bf16_bits_to_float(static_cast<const uint16_t*>(b)[off]);
}

template <int DT>
static inline void prefetch_b(const void* b, int64_t off) {
  __builtin_prefetch(static_cast<const char*>(b) + off * (DT == kFloat32 ? 4 : 2));
}

// ---------------------------------------------------------------------------
// Decode: acc[0:n] += sum over R rows of val[r] * B[idx[r], n0 : n0 + n].
// R rows per pass, so the accumulator is loaded and stored once per R rows.
template <int DT, int R>
static inline void decode_rows(const void* b, int64_t ldb, int64_t n0, int64_t n,
                               const int32_t* idx, const float* val, float* acc) {
  int64_t off[R];
  vf w[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    off[r] = static_cast<int64_t>(idx[r]) * ldb + n0;
    w[r] = v_bcast(val[r]);
  }
  int64_t c = 0;
  for (; c + 2 * VW <= n; c += 2 * VW) {
    vf a0 = v_loadu(acc + c);
    vf a1 = v_loadu(acc + c + VW);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      a0 = v_fma(w[r], load_b<DT>(b, off[r] + c), a0);
      a1 = v_fma(w[r], load_b<DT>(b, off[r] + c + VW), a1);
    }
    v_storeu(acc + c, a0);
    v_storeu(acc + c + VW, a1);
  }
  for (; c + VW <= n; c += VW) {
    vf a0 = v_loadu(acc + c);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) a0 = v_fma(w[r], load_b<DT>(b, off[r] + c), a0);
    v_storeu(acc + c, a0);
  }
  for (; c < n; ++c) {
    float s = acc[c];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) s += val[r] * load_b_scalar<DT>(b, off[r] + c);
    acc[c] = s;
  }
}

// Rows per pass of the decode kernel: more rows in flight keep more DRAM requests
// outstanding; 16 broadcast weights still fit the AVX-512 register file.
#if defined(__AVX512F__)
constexpr int kDecodeRows = 16;
#else
constexpr int kDecodeRows = 8;
#endif
constexpr int kPrefetchLines = 2;

template <int DT>
static void decode_impl(const void* b, int64_t ldb, int64_t n0, int64_t n1,
                        const int32_t* idx, const float* val, int64_t count, float* acc) {
  const int64_t n = n1 - n0;
  if (n <= 0) return;
  const int64_t elems_per_line = 64 / (DT == kFloat32 ? 4 : 2);
  const int64_t head = n < kPrefetchLines * elems_per_line ? n : kPrefetchLines * elems_per_line;
  int64_t r = 0;
  for (; r + kDecodeRows <= count; r += kDecodeRows) {
    // Start the next group's rows now: the hardware prefetcher follows a row once it
    // is being read, but cannot foresee the jump to the next (sparse) rows.
    const int64_t next_end = r + 2 * kDecodeRows < count ? r + 2 * kDecodeRows : count;
    for (int64_t q = r + kDecodeRows; q < next_end; ++q) {
      const int64_t off = static_cast<int64_t>(idx[q]) * ldb + n0;
      for (int64_t e = 0; e < head; e += elems_per_line) prefetch_b<DT>(b, off + e);
    }
    decode_rows<DT, kDecodeRows>(b, ldb, n0, n, idx + r, val + r, acc);
  }
  if (kDecodeRows > 8 && r + 8 <= count) {
    decode_rows<DT, 8>(b, ldb, n0, n, idx + r, val + r, acc);
    r += 8;
  }
  if (r + 4 <= count) {
    decode_rows<DT, 4>(b, ldb, n0, n, idx + r, val + r, acc);
    r += 4;
  }
  for (; r < count; ++r) decode_rows<DT, 1>(b, ldb, n0, n, idx + r, val + r, acc);
}

// ---------------------------------------------------------------------------
// Prefill: a TM x (NV * VW) block of the output held in registers, accumulated
// over the tile's union rows; each of those weight row segments is read once.
constexpr int TS = WINA_TILE_STRIDE;
constexpr int NV = WINA_TILE_NV;

// Weight columns from bc0, output (and bias) columns from c0.
template <int DT, int TM, int V>
static inline void tile_block(const void* b, int64_t ldb, int64_t bc0, int64_t c0, const TileDesc& tile,
                              const float* bias, float* y, int64_t ldy) {
  vf acc[TM][V];
#pragma GCC unroll 16
  for (int v = 0; v < V; ++v) {
    const vf init = bias ? v_loadu(bias + c0 + v * VW) : v_zero();
#pragma GCC unroll 16
    for (int t = 0; t < TM; ++t) acc[t][v] = init;
  }
  const int32_t* idx = tile.idx;
  const float* xs = tile.xs;
  const int64_t count = tile.count;
  for (int64_t u = 0; u < count; ++u) {
    const int64_t off = static_cast<int64_t>(idx[u]) * ldb + bc0;
    vf bv[V];
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) bv[v] = load_b<DT>(b, off + v * VW);
    const float* xu = xs + u * TS;
#pragma GCC unroll 16
    for (int t = 0; t < TM; ++t) {
      const vf xt = v_bcast(xu[t]);
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) acc[t][v] = v_fma(xt, bv[v], acc[t][v]);
    }
  }
  float* yr = y + tile.y_row * ldy + c0;
#pragma GCC unroll 16
  for (int t = 0; t < TM; ++t) {
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) v_storeu(yr + t * ldy + v * VW, acc[t][v]);
  }
}

// Columns [c0, c0 + cols) with cols < VW, scalar.
template <int DT>
static inline void tile_tail(const void* b, int64_t ldb, int64_t c0, int64_t cols,
                             const TileDesc& tile, const float* bias, float* y, int64_t ldy) {
  float acc[TS][VW];
  for (int t = 0; t < tile.tokens; ++t)
    for (int64_t c = 0; c < cols; ++c) acc[t][c] = bias ? bias[c0 + c] : 0.0f;
  for (int64_t u = 0; u < tile.count; ++u) {
    const int64_t off = static_cast<int64_t>(tile.idx[u]) * ldb + c0;
    const float* xu = tile.xs + u * TS;
    for (int64_t c = 0; c < cols; ++c) {
      const float bval = load_b_scalar<DT>(b, off + c);
      for (int t = 0; t < tile.tokens; ++t) acc[t][c] += xu[t] * bval;
    }
  }
  for (int t = 0; t < tile.tokens; ++t)
    for (int64_t c = 0; c < cols; ++c) y[(tile.y_row + t) * ldy + c0 + c] = acc[t][c];
}

template <int DT, int V, int TM>
static inline void tile_dispatch(const void* b, int64_t ldb, int64_t bc0, int64_t c0, const TileDesc& tile,
                                 const float* bias, float* y, int64_t ldy) {
  if (tile.tokens == TM) {
    tile_block<DT, TM, V>(b, ldb, bc0, c0, tile, bias, y, ldy);
    return;
  }
  if constexpr (TM > 1) tile_dispatch<DT, V, TM - 1>(b, ldb, bc0, c0, tile, bias, y, ldy);
}

template <int DT>
static void tiles_impl(const void* b, int64_t ldb, int64_t n0, int64_t n1,
                       const TileDesc* tiles, int64_t num_tiles, int32_t tile_stride,
                       const int32_t* used_rows, int64_t num_used, float* pack,
                       const float* bias, float* y, int64_t ldy) {
  (void)tile_stride;  // always TS: the driver builds the tiles with our table's stride
  constexpr int NB = NV * VW;
  int64_t c = n0;
  for (; c + NB <= n1; c += NB) {
    if (pack != nullptr) {
      for (int64_t r = 0; r < num_used; ++r) {
        const int64_t row = used_rows[r];
        const int64_t off = row * ldb + c;
        float* dst = pack + row * NB;
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) v_storeu(dst + v * VW, load_b<DT>(b, off + v * VW));
      }
      for (int64_t i = 0; i < num_tiles; ++i)
        tile_dispatch<kFloat32, NV, TS>(pack, NB, 0, c, tiles[i], bias, y, ldy);
    } else {
      for (int64_t i = 0; i < num_tiles; ++i)
        tile_dispatch<DT, NV, TS>(b, ldb, c, c, tiles[i], bias, y, ldy);
    }
  }
  for (; c + VW <= n1; c += VW)
    for (int64_t i = 0; i < num_tiles; ++i) tile_dispatch<DT, 1, TS>(b, ldb, c, c, tiles[i], bias, y, ldy);
  if (c < n1)
    for (int64_t i = 0; i < num_tiles; ++i) tile_tail<DT>(b, ldb, c, n1 - c, tiles[i], bias, y, ldy);
}

}  // namespace
}  // namespace wina

#include "gating_impl.h"
#include "nbits_impl.h"

// The including file names its table with this macro.
#define WINA_DEFINE_ISA_TABLE(func, isa_name)                                        \
  namespace wina {                                                                   \
  const IsaKernels& func() {                                                         \
    static const IsaKernels table = {                                                \
        isa_name,                                                                    \
        TS,                                                                          \
        NV * VW,                                                                     \
        gate_impl,                                                                   \
        {decode_impl<kFloat32>, decode_impl<kFloat16>, decode_impl<kBFloat16>},      \
        {tiles_impl<kFloat32>, tiles_impl<kFloat16>, tiles_impl<kBFloat16>},         \
        &nbits_table()};                                                             \
    return table;                                                                    \
  }                                                                                  \
  }

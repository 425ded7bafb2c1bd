// Inner loops of WinaSparseMatMulNBits (4-bit feature-major weights), compiled once per
// instruction set as part of kernels_impl.h, whose vector layer (vf, VW, v_*), load_b and
// tile_dispatch they use. Internal linkage only, no C++ library templates (see there).
//
// Decode (one token) works per block of G input features. For a chunk of columns held in
// registers it accumulates over the block's kept rows
//     acc[n] = sum_i x_i * code(i, n)
// and then adds scale(b, n) * (acc[n] - zero_point(b, n) * sum_i x_i) to the token's row:
// one multiply-add per code, the scale and zero point once per block. A masked feature's
// row is never read.
//
// Columns come in nibble groups of 2 * VW: VW bytes of a row, whose low nibbles are the
// even columns and high nibbles the odd ones. Accumulators keep that split (VW even
// columns, then VW odd ones); the last step interleaves them into column order.
//
// The int8 decode (accuracy_level 4) quantizes the block's kept x to int8 (one scale per
// block, as MatMulNBits does) and sums code * x over groups of four kept rows, whose bytes
// are interleaved: with vpdpbusd after two-source byte permutes (AVX-512 VNNI + VBMI), or
// with vpmaddubsw + vpmaddwd after in-lane unpacks (AVX2).
#pragma once

#include <cstdint>
#include <cstring>

#include "nbits_isa.h"

namespace wina {
namespace {

constexpr int NBG = 2 * VW;  // columns per nibble group
constexpr int kNbitsChunk = 4;  // nibble groups per register chunk of the decode

// ---------------------------------------------------------------------------
// Per-ISA primitives.
#if defined(__AVX512F__)
static inline vf nb_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf nb_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline vf nb_fnma(vf a, vf b, vf c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a * b
// Codes of the VW bytes at p: lane j of `even` / `odd` is the low / high nibble of byte j.
// vpermps reads only the low 4 bits of each index: a 16-entry table of 0..15 converts.
static inline void nb_codes(const uint8_t* p, vf& even, vf& odd) {
  const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m512 table = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  even = _mm512_permutexvar_ps(v, table);
  odd = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), table);
}
// 2 * VW values in column order (a, then b) split into even and odd columns, and back.
static inline void nb_split(vf a, vf b, vf& even, vf& odd) {
  even = _mm512_permutex2var_ps(a, _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), b);
  odd = _mm512_permutex2var_ps(a, _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31), b);
}
static inline void nb_merge_store(float* dst, vf even, vf odd) {
  _mm512_storeu_ps(dst, _mm512_permutex2var_ps(
      even, _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23), odd));
  _mm512_storeu_ps(dst + 16, _mm512_permutex2var_ps(
      even, _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31), odd));
}
#elif defined(__AVX2__)
static inline vf nb_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf nb_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
static inline vf nb_fnma(vf a, vf b, vf c) { return _mm256_fnmadd_ps(a, b, c); }
static inline void nb_codes(const uint8_t* p, vf& even, vf& odd) {
  const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  even = _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(15)));
  odd = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4));
}
static inline void nb_split(vf a, vf b, vf& even, vf& odd) {
  // shuffle_ps works within 128-bit lanes: [a0 a2 b0 b2 | a4 a6 b4 b6], then order the 64-bit pairs.
  even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88)), 0xD8));
  odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xDD)), 0xD8));
}
static inline void nb_merge_store(float* dst, vf even, vf odd) {
  const __m256 lo = _mm256_unpacklo_ps(even, odd), hi = _mm256_unpackhi_ps(even, odd);
  _mm256_storeu_ps(dst, _mm256_permute2f128_ps(lo, hi, 0x20));
  _mm256_storeu_ps(dst + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
}
#elif defined(__SSE2__)
static inline vf nb_mul(vf a, vf b) { return _mm_mul_ps(a, b); }
static inline vf nb_sub(vf a, vf b) { return _mm_sub_ps(a, b); }
static inline vf nb_fnma(vf a, vf b, vf c) { return _mm_sub_ps(c, _mm_mul_ps(a, b)); }
static inline void nb_codes(const uint8_t* p, vf& even, vf& odd) {
  int32_t bytes;
  std::memcpy(&bytes, p, 4);
  const __m128i z = _mm_setzero_si128();
  const __m128i v = _mm_unpacklo_epi16(_mm_unpacklo_epi8(_mm_cvtsi32_si128(bytes), z), z);
  even = _mm_cvtepi32_ps(_mm_and_si128(v, _mm_set1_epi32(15)));
  odd = _mm_cvtepi32_ps(_mm_srli_epi32(v, 4));
}
static inline void nb_split(vf a, vf b, vf& even, vf& odd) {
  even = _mm_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
  odd = _mm_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
}
static inline void nb_merge_store(float* dst, vf even, vf odd) {
  _mm_storeu_ps(dst, _mm_unpacklo_ps(even, odd));
  _mm_storeu_ps(dst + 4, _mm_unpackhi_ps(even, odd));
}
#else
static inline vf nb_mul(vf a, vf b) { return a * b; }
static inline vf nb_sub(vf a, vf b) { return a - b; }
static inline vf nb_fnma(vf a, vf b, vf c) { return c - a * b; }
static inline void nb_codes(const uint8_t* p, vf& even, vf& odd) {
  even = static_cast<float>(p[0] & 15);
  odd = static_cast<float>(p[0] >> 4);
}
static inline void nb_split(vf a, vf b, vf& even, vf& odd) {
  even = a;
  odd = b;
}
static inline void nb_merge_store(float* dst, vf even, vf odd) {
  dst[0] = even;
  dst[1] = odd;
}
#endif

// ---------------------------------------------------------------------------
// Shared helpers.

// The VW code bytes of nibble group g of a row; the last group of a row may hang over
// its end (ldb not a multiple of VW): then the bytes are copied, zero-padded, into buf.
static inline const uint8_t* nb_group_bytes(const uint8_t* row, int64_t ldb, int64_t g, uint8_t* buf) {
  const int64_t start = g * VW;
  if (start + VW <= ldb) return row + start;
  for (int j = 0; j < VW; ++j) buf[j] = start + j < ldb ? row[start + j] : 0;
  return buf;
}

// 2 * VW values of a [blocks, N] tensor of type DT (row b, columns from c), zero past N.
template <int DT>
static inline void nb_load_row(const void* src, int64_t N, int64_t b, int64_t c, vf& a0, vf& a1) {
  const int64_t off = b * N + c;
  if (c + NBG <= N) {
    a0 = load_b<DT>(src, off);
    a1 = load_b<DT>(src, off + VW);
    return;
  }
  float tmp[NBG];
  for (int j = 0; j < NBG; ++j) tmp[j] = c + j < N ? load_b_scalar<DT>(src, off + j) : 0.0f;
  a0 = v_loadu(tmp);
  a1 = v_loadu(tmp + VW);
}

// Scales and zero points of block b for the nibble group at column c, split even / odd.
template <int DT>
static inline void nb_group_affine(const NbitsWeight& w, int64_t b, int64_t c, vf& se, vf& so, vf& ze, vf& zo) {
  vf a0, a1;
  nb_load_row<DT>(w.scales, w.N, b, c, a0, a1);
  nb_split(a0, a1, se, so);
  if (w.zero_kind == kZeroPointsPacked) {
    uint8_t buf[VW];
    const uint8_t* row = static_cast<const uint8_t*>(w.zero_points) + b * w.ldb;
    nb_codes(nb_group_bytes(row, w.ldb, c / NBG, buf), ze, zo);
  } else if (w.zero_kind == kZeroPointsFloat) {
    nb_load_row<DT>(w.zero_points, w.N, b, c, a0, a1);
    nb_split(a0, a1, ze, zo);
  } else {
    ze = zo = v_bcast(8.0f);
  }
}

// out[0:N] in column order from the even / odd split of work.
static inline void nb_merge_row(const float* work, int64_t N, float* out) {
  int64_t c = 0;
  for (; c + NBG <= N; c += NBG) nb_merge_store(out + c, v_loadu(work + c), v_loadu(work + c + VW));
  if (c < N) {
    float tmp[NBG];
    nb_merge_store(tmp, v_loadu(work + c), v_loadu(work + c + VW));
    for (int64_t j = 0; c + j < N; ++j) out[c + j] = tmp[j];
  }
}

// The kept rows of the next block that has any, prefetched into L2 while this block is
// computed: the block's rows are read a chunk at a time side by side, too many short
// streams for the hardware prefetchers, while the next rows' addresses are known. The
// prefetches of a chunk are spread over its steps (rows or row quads): issued all at
// once they fill the miss buffers and stall the loop that should hide them.
struct NbNext {
  const int32_t* idx;
  int64_t count;
  int64_t block;
};

// The next block after b in [b, b1) with kept rows (none: count 0).
static inline NbNext nb_next_block(const int64_t* first, const int32_t* idx, int64_t b, int64_t b1) {
  for (int64_t n = b + 1; n < b1; ++n)
    if (first[n + 1] > first[n]) return NbNext{idx + first[n], first[n + 1] - first[n], n};
  return NbNext{idx, 0, 0};
}

// The prefetches for one chunk of bytes [byte0, byte0 + bytes) of the rows (columns from
// 2 byte0): one line of each of the next block's rows, then its scale lines for those
// columns, a few per step.
template <int DT>
struct NbPrefetch {
  const uint8_t* codes = nullptr;
  int64_t ldb = 0;
  const int32_t* idx = nullptr;
  int64_t rows = 0;         // row prefetches, then scale lines
  const char* scales = nullptr;
  int64_t items = 0;
  int64_t done = 0;
  int64_t per_step = 0;

  NbPrefetch(const NbitsWeight& w, const NbNext& next, int64_t byte0, int64_t bytes, int64_t steps) {
    if (next.count == 0 || (byte0 & 63) >= bytes) return;  // one prefetch per row and 64 bytes
    constexpr int64_t esize = DT == kFloat32 ? 4 : 2;
    const int64_t c0 = 2 * (byte0 & ~int64_t{63});
    const int64_t cols = c0 + 128 < w.N ? 128 : w.N - c0;
    codes = w.codes + byte0;
    ldb = w.ldb;
    idx = next.idx;
    rows = next.count;
    scales = static_cast<const char*>(w.scales) + (next.block * w.N + c0) * esize;
    items = rows + (cols * esize + 63) / 64;
    per_step = steps > 0 ? (items + steps - 1) / steps : items;
  }
  inline void step() {
    const int64_t end = done + per_step < items ? done + per_step : items;
    for (; done < end; ++done) {
      if (done < rows) {
        __builtin_prefetch(codes + static_cast<int64_t>(idx[done]) * ldb, 0, 2);
      } else {
        __builtin_prefetch(scales + (done - rows) * 64, 0, 2);
      }
    }
  }
  inline void finish() {
    per_step = items;
    step();
  }
};

// ---------------------------------------------------------------------------
// Float decode.

// Q nibble groups from g0 over the block's cnt kept rows; the last group may be partial.
template <int DT, int Q>
static inline void nb_float_chunk(const NbitsWeight& w, int64_t b, int64_t g0, const int32_t* idx, const float* val,
                                  int64_t cnt, float sumx, const NbNext& next, float* work) {
  const int64_t ldb = w.ldb;
  const bool whole = (g0 + Q) * VW <= ldb;
  NbPrefetch<DT> prefetch(w, next, g0 * VW, Q * VW, cnt);
  vf ae[Q], ao[Q];
#pragma GCC unroll 8
  for (int q = 0; q < Q; ++q) ae[q] = ao[q] = v_zero();
  for (int64_t r = 0; r < cnt; ++r) {
    const uint8_t* row = w.codes + static_cast<int64_t>(idx[r]) * ldb;
    const vf xb = v_bcast(val[r]);
    prefetch.step();
    if (whole) {
      const uint8_t* p = row + g0 * VW;
#pragma GCC unroll 8
      for (int q = 0; q < Q; ++q) {
        vf e, o;
        nb_codes(p + q * VW, e, o);
        ae[q] = v_fma(xb, e, ae[q]);
        ao[q] = v_fma(xb, o, ao[q]);
      }
    } else {
      uint8_t buf[VW];
#pragma GCC unroll 8
      for (int q = 0; q < Q; ++q) {
        vf e, o;
        nb_codes(nb_group_bytes(row, ldb, g0 + q, buf), e, o);
        ae[q] = v_fma(xb, e, ae[q]);
        ao[q] = v_fma(xb, o, ao[q]);
      }
    }
  }
  prefetch.finish();
  const vf vsum = v_bcast(sumx);
#pragma GCC unroll 8
  for (int q = 0; q < Q; ++q) {
    const int64_t c = (g0 + q) * NBG;
    vf se, so, ze, zo;
    nb_group_affine<DT>(w, b, c, se, so, ze, zo);
    v_storeu(work + c, v_fma(se, nb_fnma(ze, vsum, ae[q]), v_loadu(work + c)));
    v_storeu(work + c + VW, v_fma(so, nb_fnma(zo, vsum, ao[q]), v_loadu(work + c + VW)));
  }
}

// Adds block b's kept rows (cnt of them) to work, in float.
template <int DT>
static inline void nb_float_block(const NbitsWeight& w, int64_t b, const int32_t* idx, const float* val, int64_t cnt,
                                  const NbNext& next, float* work) {
  float sumx = 0.0f;
  for (int64_t r = 0; r < cnt; ++r) sumx += val[r];
  const int64_t groups = (w.ldb + VW - 1) / VW;
  int64_t g = 0;
  for (; g + kNbitsChunk <= groups; g += kNbitsChunk)
    nb_float_chunk<DT, kNbitsChunk>(w, b, g, idx, val, cnt, sumx, next, work);
  for (; g < groups; ++g) nb_float_chunk<DT, 1>(w, b, g, idx, val, cnt, sumx, next, work);
}

template <int DT>
static void nbits_decode_float_impl(const NbitsWeight& w, int64_t b0, int64_t b1, const int64_t* first,
                                    const int32_t* idx, const float* val, float* work, float* out) {
  const int64_t groups = (w.ldb + VW - 1) / VW;
  for (int64_t c = 0; c < groups * NBG; ++c) work[c] = 0.0f;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t f = first[b], cnt = first[b + 1] - f;
    if (cnt > 0) nb_float_block<DT>(w, b, idx + f, val + f, cnt, nb_next_block(first, idx, b, b1), work);
  }
  nb_merge_row(work, w.N, out);
}

// ---------------------------------------------------------------------------
// Int8 decode: AVX-512 with VNNI (vpdpbusd) and VBMI (vpermt2b), checked at run time.
#if defined(__AVX512F__)
#define WINA_NBITS_INT8_TARGET __attribute__((target("avx512vnni,avx512vbmi")))

// Permute indices that interleave two vectors a, b in lanes of type E (bytes for vpermt2b,
// words for vpermt2w): (a[j], b[j]) for j in [base, base + n), n = 32 / sizeof(E).
template <typename E>
WINA_NBITS_INT8_TARGET static inline __m512i nb_interleave_index(int base) {
  constexpr int n = 32 / static_cast<int>(sizeof(E));
  alignas(64) E t[2 * n];
  for (int j = 0; j < n; ++j) {
    t[2 * j] = static_cast<E>(base + j);
    t[2 * j + 1] = static_cast<E>(2 * n + base + j);
  }
  return _mm512_load_si512(t);
}

// Q nibble groups (Q * 16 bytes) from byte `byte0` of four kept rows per step. Lane j of
// quad vector q holds byte 16 q + j of the four rows: its low nibbles are column
// 32 q + 2 j of the four rows, its high nibbles column 32 q + 2 j + 1, so vpdpbusd of
// such a vector with the four rows' int8 x (broadcast) sums over the rows. `full` sums
// whole bytes (low + 16 high), `high` the bytes masked to their high nibbles (16 high):
// the low sum is their difference, without masking the low nibbles.
template <int DT, int Q>
WINA_NBITS_INT8_TARGET static inline void nb_int8_chunk(const NbitsWeight& w, int64_t b, int64_t g0,
                                                        const uint8_t* const* rows, const int32_t* xq4,
                                                        int64_t quads, float sx, int32_t sumxq, const NbNext& next,
                                                        float* work) {
  const int64_t byte0 = g0 * 16;
  NbPrefetch<DT> prefetch(w, next, byte0, Q * 16, quads);
  const int64_t avail = w.ldb - byte0;
  const bool whole = avail >= 64;
  const __mmask64 mask = whole ? ~0ull : (1ull << avail) - 1;
  const __m512i pair0 = nb_interleave_index<uint8_t>(0), pair1 = nb_interleave_index<uint8_t>(32);
  const __m512i quad0 = nb_interleave_index<uint16_t>(0), quad1 = nb_interleave_index<uint16_t>(16);
  const __m512i hi = _mm512_set1_epi8(static_cast<char>(0xF0));
  __m512i af[Q], ah[Q];
#pragma GCC unroll 4
  for (int q = 0; q < Q; ++q) af[q] = ah[q] = _mm512_setzero_si512();
  for (int64_t u = 0; u < quads; ++u) {
    const uint8_t* p0 = rows[4 * u] + byte0;
    const uint8_t* p1 = rows[4 * u + 1] + byte0;
    const uint8_t* p2 = rows[4 * u + 2] + byte0;
    const uint8_t* p3 = rows[4 * u + 3] + byte0;
    __m512i r0, r1, r2, r3;
    if (whole) {
      r0 = _mm512_loadu_si512(p0);
      r1 = _mm512_loadu_si512(p1);
      r2 = _mm512_loadu_si512(p2);
      r3 = _mm512_loadu_si512(p3);
    } else {
      r0 = _mm512_maskz_loadu_epi8(mask, p0);
      r1 = _mm512_maskz_loadu_epi8(mask, p1);
      r2 = _mm512_maskz_loadu_epi8(mask, p2);
      r3 = _mm512_maskz_loadu_epi8(mask, p3);
    }
    prefetch.step();
    const __m512i xb = _mm512_set1_epi32(xq4[u]);
    __m512i qv[4];
    const __m512i t01a = _mm512_permutex2var_epi8(r0, pair0, r1);
    const __m512i t23a = _mm512_permutex2var_epi8(r2, pair0, r3);
    qv[0] = _mm512_permutex2var_epi16(t01a, quad0, t23a);
    if (Q > 1) qv[1] = _mm512_permutex2var_epi16(t01a, quad1, t23a);
    if (Q > 2) {
      const __m512i t01b = _mm512_permutex2var_epi8(r0, pair1, r1);
      const __m512i t23b = _mm512_permutex2var_epi8(r2, pair1, r3);
      qv[2] = _mm512_permutex2var_epi16(t01b, quad0, t23b);
      if (Q > 3) qv[3] = _mm512_permutex2var_epi16(t01b, quad1, t23b);
    }
#pragma GCC unroll 4
    for (int q = 0; q < Q; ++q) {
      af[q] = _mm512_dpbusd_epi32(af[q], qv[q], xb);
      ah[q] = _mm512_dpbusd_epi32(ah[q], _mm512_and_si512(qv[q], hi), xb);
    }
  }
  prefetch.finish();
  const __m512 vsx = _mm512_set1_ps(sx), vsx16 = _mm512_set1_ps(sx * 0.0625f);
  const __m512 offset = _mm512_set1_ps(sx * static_cast<float>(sumxq));
#pragma GCC unroll 4
  for (int q = 0; q < Q; ++q) {
    const int64_t c = (g0 + q) * NBG;
    if (c >= w.N) break;
    vf se, so, ze, zo;
    nb_group_affine<DT>(w, b, c, se, so, ze, zo);
    const __m512i lo_sum = _mm512_sub_epi32(af[q], ah[q]);
    const __m512 te = _mm512_fnmadd_ps(ze, offset, _mm512_mul_ps(_mm512_cvtepi32_ps(lo_sum), vsx));
    const __m512 to = _mm512_fnmadd_ps(zo, offset, _mm512_mul_ps(_mm512_cvtepi32_ps(ah[q]), vsx16));
    _mm512_storeu_ps(work + c, _mm512_fmadd_ps(se, te, _mm512_loadu_ps(work + c)));
    _mm512_storeu_ps(work + c + 16, _mm512_fmadd_ps(so, to, _mm512_loadu_ps(work + c + 16)));
  }
}

static bool nbits_cpu_has_int8() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi");
}
#define WINA_NBITS_HAVE_INT8 1
#endif  // __AVX512F__

// ---------------------------------------------------------------------------
// Int8 decode with AVX2 (no VNNI): vpmaddubsw multiplies the codes (u8, one nibble per
// byte, shifted down: 15 x 127 x 2 fits int16) by the four rows' x and adds pairs,
// vpmaddwd with ones adds the two pairs into int32. The four rows' bytes are interleaved
// within 128-bit lanes: dword d of lane h of quad vector k holds byte 16 h + 4 k + d.
#if defined(__AVX2__) && !defined(__AVX512F__)
#define WINA_NBITS_INT8_TARGET
#define WINA_NBITS_HAVE_INT8 1

// The four rows' 32 bytes at byte0; the last chunk of a row (Whole false) zero-padded.
template <bool Whole>
static inline __m256i nb_avx2_row_bytes(const uint8_t* row, int64_t byte0, int64_t avail) {
  if (Whole) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + byte0));
  alignas(32) uint8_t pad[32];
  for (int j = 0; j < 32; ++j) pad[j] = j < avail ? row[byte0 + j] : 0;
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(pad));
}

static inline void nb_avx2_quad_dot(__m256i q, __m256i xb, __m256i& al, __m256i& ah) {
  const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  const __m256i lo = _mm256_and_si256(q, low);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
  al = _mm256_add_epi32(al, _mm256_madd_epi16(_mm256_maddubs_epi16(lo, xb), ones));
  ah = _mm256_add_epi32(ah, _mm256_madd_epi16(_mm256_maddubs_epi16(hi, xb), ones));
}

template <int DT, bool Whole>
static inline void nb_int8_chunk_avx2(const NbitsWeight& w, int64_t b, int64_t byte0, const uint8_t* const* rows,
                                      const int32_t* xq4, int64_t quads, float sx, int32_t sumxq, const NbNext& next,
                                      float* work) {
  const int64_t avail = w.ldb - byte0;
  NbPrefetch<DT> prefetch(w, next, byte0, 32, quads);
  __m256i al0 = _mm256_setzero_si256(), al1 = al0, al2 = al0, al3 = al0;
  __m256i ah0 = al0, ah1 = al0, ah2 = al0, ah3 = al0;
  for (int64_t u = 0; u < quads; ++u) {
    prefetch.step();
    const __m256i r0 = nb_avx2_row_bytes<Whole>(rows[4 * u], byte0, avail);
    const __m256i r1 = nb_avx2_row_bytes<Whole>(rows[4 * u + 1], byte0, avail);
    const __m256i r2 = nb_avx2_row_bytes<Whole>(rows[4 * u + 2], byte0, avail);
    const __m256i r3 = nb_avx2_row_bytes<Whole>(rows[4 * u + 3], byte0, avail);
    const __m256i xb = _mm256_set1_epi32(xq4[u]);
    const __m256i t01l = _mm256_unpacklo_epi8(r0, r1), t01h = _mm256_unpackhi_epi8(r0, r1);
    const __m256i t23l = _mm256_unpacklo_epi8(r2, r3), t23h = _mm256_unpackhi_epi8(r2, r3);
    nb_avx2_quad_dot(_mm256_unpacklo_epi16(t01l, t23l), xb, al0, ah0);
    nb_avx2_quad_dot(_mm256_unpackhi_epi16(t01l, t23l), xb, al1, ah1);
    nb_avx2_quad_dot(_mm256_unpacklo_epi16(t01h, t23h), xb, al2, ah2);
    nb_avx2_quad_dot(_mm256_unpackhi_epi16(t01h, t23h), xb, al3, ah3);
  }
  const __m256i al[4] = {al0, al1, al2, al3}, ah[4] = {ah0, ah1, ah2, ah3};
  prefetch.finish();
  const __m256 vsx = _mm256_set1_ps(sx), offset = _mm256_set1_ps(sx * static_cast<float>(sumxq));
  // Nibble group g of the chunk (bytes 8 g .. 8 g + 7): lane g / 2 of quad vectors
  // 2 (g % 2) and 2 (g % 2) + 1.
  for (int g = 0; g < 4; ++g) {
    const int64_t c = 2 * byte0 + NBG * g;
    if (c >= w.N) break;
    const int k0 = 2 * (g & 1);
    const __m256i even = (g >> 1) ? _mm256_permute2x128_si256(al[k0], al[k0 + 1], 0x31)
                                  : _mm256_permute2x128_si256(al[k0], al[k0 + 1], 0x20);
    const __m256i odd = (g >> 1) ? _mm256_permute2x128_si256(ah[k0], ah[k0 + 1], 0x31)
                                 : _mm256_permute2x128_si256(ah[k0], ah[k0 + 1], 0x20);
    vf se, so, ze, zo;
    nb_group_affine<DT>(w, b, c, se, so, ze, zo);
    const __m256 te = _mm256_fnmadd_ps(ze, offset, _mm256_mul_ps(_mm256_cvtepi32_ps(even), vsx));
    const __m256 to = _mm256_fnmadd_ps(zo, offset, _mm256_mul_ps(_mm256_cvtepi32_ps(odd), vsx));
    _mm256_storeu_ps(work + c, _mm256_fmadd_ps(se, te, _mm256_loadu_ps(work + c)));
    _mm256_storeu_ps(work + c + VW, _mm256_fmadd_ps(so, to, _mm256_loadu_ps(work + c + VW)));
  }
}
#endif  // AVX2 without AVX-512

#if defined(WINA_NBITS_HAVE_INT8)
// Largest block the int8 path quantizes (larger ones take the float path): bounds the
// stack lists and keeps the int32 sums exact in float (255 x 127 x 256 < 2^24).
constexpr int64_t kNbitsInt8MaxBlock = 256;

// Symmetric int8 x of a block's kept rows (scale max|x| / 127, rounded to nearest even),
// four rows per 32-bit word; the padding rows repeat the last kept row with x = 0.
// Returns the number of quads; sx and sumxq are the scale and the sum of the int8 x.
static inline int64_t nb_quantize_block(const NbitsWeight& w, const int32_t* idx, const float* val, int64_t cnt,
                                        float amax, const uint8_t** rows, int32_t* xq4, float& sx, int32_t& sumxq) {
  const float inv = 127.0f / amax;
  sx = amax / 127.0f;
  sumxq = 0;
  const int64_t quads = (cnt + 3) / 4;
  for (int64_t u = 0; u < quads; ++u) {
    uint32_t word = 0;
    for (int j = 0; j < 4; ++j) {
      const int64_t r = 4 * u + j;
      int32_t q = 0;
      if (r < cnt) {
        q = _mm_cvtss_si32(_mm_set_ss(val[r] * inv));  // nearest, ties to even
        q = q > 127 ? 127 : (q < -127 ? -127 : q);
        rows[r] = w.codes + static_cast<int64_t>(idx[r]) * w.ldb;
      } else {
        rows[r] = w.codes + static_cast<int64_t>(idx[cnt - 1]) * w.ldb;
      }
      sumxq += q;
      word |= static_cast<uint32_t>(static_cast<uint8_t>(static_cast<int8_t>(q))) << (8 * j);
    }
    xq4[u] = static_cast<int32_t>(word);
  }
  return quads;
}

template <int DT>
WINA_NBITS_INT8_TARGET static void nbits_decode_int8_impl(const NbitsWeight& w, int64_t b0, int64_t b1,
                                                          const int64_t* first, const int32_t* idx,
                                                          const float* val, float* work, float* out) {
  const int64_t groups = (w.ldb + VW - 1) / VW;
  for (int64_t c = 0; c < groups * NBG; ++c) work[c] = 0.0f;
  const uint8_t* rows[kNbitsInt8MaxBlock + 4];
  int32_t xq4[kNbitsInt8MaxBlock / 4 + 1];
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t f = first[b], cnt = first[b + 1] - f;
    if (cnt == 0) continue;
    float amax = 0.0f;
    bool finite = true;
    for (int64_t r = 0; r < cnt; ++r) {
      const float a = __builtin_fabsf(val[f + r]);
      amax = a > amax ? a : amax;
      finite = finite && (val[f + r] - val[f + r] == 0.0f);
    }
    const NbNext next = nb_next_block(first, idx, b, b1);
    if (!finite || cnt > kNbitsInt8MaxBlock) {  // NaN / inf propagate as in float
      nb_float_block<DT>(w, b, idx + f, val + f, cnt, next, work);
      continue;
    }
    if (amax == 0.0f) continue;
    float sx;
    int32_t sumxq;
    const int64_t quads = nb_quantize_block(w, idx + f, val + f, cnt, amax, rows, xq4, sx, sumxq);
#if defined(__AVX512F__)
    int64_t g = 0;
    for (; g + 4 <= groups; g += 4) nb_int8_chunk<DT, 4>(w, b, g, rows, xq4, quads, sx, sumxq, next, work);
    if (g + 2 <= groups) {
      nb_int8_chunk<DT, 2>(w, b, g, rows, xq4, quads, sx, sumxq, next, work);
      g += 2;
    }
    if (g < groups) nb_int8_chunk<DT, 1>(w, b, g, rows, xq4, quads, sx, sumxq, next, work);
#else
    int64_t byte0 = 0;
    for (; byte0 + 32 <= w.ldb; byte0 += 32)
      nb_int8_chunk_avx2<DT, true>(w, b, byte0, rows, xq4, quads, sx, sumxq, next, work);
    if (byte0 < w.ldb) nb_int8_chunk_avx2<DT, false>(w, b, byte0, rows, xq4, quads, sx, sumxq, next, work);
#endif
  }
  nb_merge_row(work, w.N, out);
}
#endif  // WINA_NBITS_HAVE_INT8

// ---------------------------------------------------------------------------
// Prefill: dequantize a column block of the used rows into pack, then the float tiles.
// The block is a whole number of nibble groups and of the float tiles' micro-blocks
// (NV vectors): their least common multiple.

constexpr int64_t nb_gcd(int64_t a, int64_t b) { return b == 0 ? a : nb_gcd(b, a % b); }
constexpr int64_t NBP = NBG / nb_gcd(NBG, NV * VW) * (NV * VW);  // columns per pack row

// Columns [c0, c0 + cols) of y, cols < VW, from pack columns [bc0, bc0 + cols).
static inline void nb_tile_tail(const float* pack, int64_t bc0, int64_t c0, int64_t cols, const TileDesc& tile,
                                const float* bias, float* y, int64_t ldy) {
  for (int t = 0; t < tile.tokens; ++t) {
    for (int64_t c = 0; c < cols; ++c) {
      float acc = bias ? bias[c0 + c] : 0.0f;
      for (int64_t u = 0; u < tile.count; ++u)
        acc += tile.xs[u * TS + t] * pack[static_cast<int64_t>(tile.idx[u]) * NBP + bc0 + c];
      y[(tile.y_row + t) * ldy + c0 + c] = acc;
    }
  }
}

// The float tiles over pack columns [0, n1 - c) (y columns [c, n1)). Not inlined into the
// dequantization loop, whose constants would otherwise take the tiles' registers.
__attribute__((noinline)) static void nb_pack_tiles(const float* pack, int64_t c, int64_t n1, const TileDesc* tiles,
                                                    int64_t num_tiles, const float* bias, float* y, int64_t ldy) {
  constexpr int64_t NB = NV * VW;
  const int64_t end = c + NBP < n1 ? c + NBP : n1;
  int64_t s = c;
  for (; s + NB <= end; s += NB)
    for (int64_t i = 0; i < num_tiles; ++i) tile_dispatch<kFloat32, NV, TS>(pack, NBP, s - c, s, tiles[i], bias, y, ldy);
  for (; s + VW <= end; s += VW)
    for (int64_t i = 0; i < num_tiles; ++i) tile_dispatch<kFloat32, 1, TS>(pack, NBP, s - c, s, tiles[i], bias, y, ldy);
  if (s < end)
    for (int64_t i = 0; i < num_tiles; ++i) nb_tile_tail(pack, s - c, s, end - s, tiles[i], bias, y, ldy);
}

template <int DT>
static void nbits_tiles_impl(const NbitsWeight& w, int64_t n0, int64_t n1, const TileDesc* tiles, int64_t num_tiles,
                             const int32_t* used_rows, int64_t num_used, float* pack, const float* bias, float* y,
                             int64_t ldy) {
  for (int64_t c = n0; c < n1; c += NBP) {
    for (int64_t gc = c; gc < c + NBP && gc < n1; gc += NBG) {  // nibble groups of the block
      const int64_t g = gc / NBG;
      int64_t block = -1;
      vf se = v_zero(), so = v_zero(), ze = v_zero(), zo = v_zero();
      uint8_t buf[VW];
      for (int64_t r = 0; r < num_used; ++r) {
        const int64_t row = used_rows[r];
        if (row / w.block_size != block) {
          block = row / w.block_size;
          nb_group_affine<DT>(w, block, gc, se, so, ze, zo);
        }
        vf e, o;
        nb_codes(nb_group_bytes(w.codes + row * w.ldb, w.ldb, g, buf), e, o);
        nb_merge_store(pack + row * NBP + (gc - c), nb_mul(nb_sub(e, ze), se), nb_mul(nb_sub(o, zo), so));
      }
    }
    nb_pack_tiles(pack, c, n1, tiles, num_tiles, bias, y, ldy);
  }
}

// This instruction set's table (IsaKernels::nbits). The int8 decode needs VNNI and VBMI
// on top of the AVX-512 subset the file is compiled for, so it is listed only where the
// CPU has them.
static const NbitsKernels& nbits_table() {
#if defined(WINA_NBITS_HAVE_INT8)
#if defined(__AVX512F__)
  static const bool int8 = nbits_cpu_has_int8();
#else
  constexpr bool int8 = true;  // the AVX2 table's own instructions
#endif
  static const NbitsKernels table = {
      static_cast<int32_t>(NBP),
      {nbits_decode_float_impl<kFloat32>, nbits_decode_float_impl<kFloat16>, nbits_decode_float_impl<kBFloat16>},
      {int8 ? nbits_decode_int8_impl<kFloat32> : nullptr, int8 ? nbits_decode_int8_impl<kFloat16> : nullptr,
       int8 ? nbits_decode_int8_impl<kBFloat16> : nullptr},
      {nbits_tiles_impl<kFloat32>, nbits_tiles_impl<kFloat16>, nbits_tiles_impl<kBFloat16>}};
#else
  static const NbitsKernels table = {
      static_cast<int32_t>(NBP),
      {nbits_decode_float_impl<kFloat32>, nbits_decode_float_impl<kFloat16>, nbits_decode_float_impl<kBFloat16>},
      {nullptr, nullptr, nullptr},
      {nbits_tiles_impl<kFloat32>, nbits_tiles_impl<kFloat16>, nbits_tiles_impl<kBFloat16>}};
#endif
  return table;
}

}  // namespace
}  // namespace wina

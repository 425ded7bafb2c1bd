// Interface between the driver (sparse_kernel.cc) and the per-ISA inner loops.
//
// The inner loops are compiled once per instruction set (isa_generic.cc, isa_avx2.cc,
// isa_avx512.cc, each with its own -m flags) from the same source, isa/kernels_impl.h.
// At kernel creation the driver picks the best table the CPU supports (isa_dispatch.cc).
// This header holds only plain data types, so it is safe to share between them.
#pragma once

#include <cstdint>

#include "../gating.h"

namespace wina {

// Element type of B (and X, Y, bias): the order is the index into the tables below.
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kNumDTypes = 3 };

// One tile of consecutive tokens for the prefill kernel. Its rows are the union of
// the rows kept by any of its tokens, in increasing index order: row idx[u] is
// multiplied by xs[u * tile_stride + t] for token t (0 where token t masks it).
struct TileDesc {
  const int32_t* idx;
  const float* xs;
  int64_t count;    // number of union rows
  int32_t tokens;   // tokens in this tile, 1..tile_stride
  int64_t y_row;    // row of the first token in the float output
};

// acc[0 : n1 - n0] += sum_r val[r] * float(B[idx[r], n0 : n1])
using DecodeFn = void (*)(const void* b, int64_t ldb, int64_t n0, int64_t n1,
                          const int32_t* idx, const float* val, int64_t count,
                          float* acc);

// For every tile and token t, columns [n0, n1):
//   y[(tile.y_row + t) * ldy + n] = bias[n] (or 0) + sum_u xs[u, t] * float(B[idx[u], n])
// With `pack` (room for K * column_block floats), each column block of the rows
// listed in used_rows (the union of the tiles' rows) is first copied, as float32,
// into pack[row * column_block ...]: a small contiguous panel that the tiles then
// read from L2 instead of strided (and cache-set-conflicting) weight rows.
using TilesFn = void (*)(const void* b, int64_t ldb, int64_t n0, int64_t n1,
                         const TileDesc* tiles, int64_t num_tiles, int32_t tile_stride,
                         const int32_t* used_rows, int64_t num_used, float* pack,
                         const float* bias, float* y, int64_t ldy);

// Work space of the gating: keys, candidates and ranks hold K entries, hist 2048.
struct GateScratch {
  uint32_t* keys;
  int32_t* candidates;
  uint64_t* ranks;
  uint32_t* hist;
};

// Gating of one token (see gating.h for the rules): lists the kept features in
// increasing index order, idx[c] = i and val[c] = x[i], and returns their count.
// idx and val need room for K + 16 entries (vector stores may run past the count).
using GateFn = int64_t (*)(const float* x, const float* score_scale, int64_t K, const GatingParams& params,
                           const GateScratch& scratch, int32_t* idx, float* val);

struct NbitsKernels;  // WinaSparseMatMulNBits' loops (nbits_isa.h)

struct IsaKernels {
  const char* name;            // "avx512", "avx2" or "generic"
  int32_t tile_stride;         // tokens per prefill tile (register blocking height)
  int32_t column_block;        // columns per prefill micro-block (register blocking width)
  GateFn gate;
  DecodeFn decode[kNumDTypes];
  TilesFn tiles[kNumDTypes];
  const NbitsKernels* nbits;   // the same instruction set's 4-bit loops
};

const IsaKernels& isa_kernels_generic();
const IsaKernels& isa_kernels_avx2();    // needs AVX2, FMA and F16C
const IsaKernels& isa_kernels_avx512();  // needs AVX-512 F, BW, VL, DQ

// The best table for this CPU. WINA_ONNX_ISA=generic|avx2|avx512 caps the choice
// (used by the tests to exercise every path on one machine).
const IsaKernels& select_isa_kernels();

}  // namespace wina

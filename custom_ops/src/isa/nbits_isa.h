// Interface between the WinaSparseMatMulNBits driver (nbits_kernel.cc) and its per-ISA
// inner loops (isa/nbits_impl.h, compiled in each isa_*.cc with that file's -m flags).
// Plain data types only, as isa.h.
#pragma once

#include <cstdint>

#include "isa.h"

namespace wina {

enum NbitsZeroPoints : int32_t {
  kZeroPointsNone = 0,    // every zero point is 8
  kZeroPointsPacked = 1,  // uint8 [blocks, ldb], packed along N like the codes
  kZeroPointsFloat = 2,   // `dtype` [blocks, N]
};

// A 4-bit weight in the feature-major layout of docs/op-schema.md:
//   W[i, n] = (code(i, n) - zero_point(i / G, n)) * scale(i / G, n)
// code (i, n) is the low nibble of codes[i * ldb + n / 2] for even n, the high nibble
// for odd n (ldb = ceil(N / 2)).
struct NbitsWeight {
  const uint8_t* codes;
  const void* scales;       // [blocks, N], `dtype`
  const void* zero_points;  // see zero_kind; nullptr for kZeroPointsNone
  DType dtype;              // of the scales and of float zero points
  NbitsZeroPoints zero_kind;
  int64_t K, N, ldb, block_size, blocks;
};

// Floats of work space a decode call needs for N columns.
inline int64_t nbits_work_floats(int64_t N) { return N + 64; }

// One token, blocks [b0, b1): out[0:N] = sum over r in [first[b0], first[b1]) of
// val[r] * W[idx[r], :]. idx is increasing; first[b] is the position in idx of the first
// kept row of block b (first has blocks + 1 entries). out is overwritten.
using NbitsDecodeFn = void (*)(const NbitsWeight& w, int64_t b0, int64_t b1, const int64_t* first,
                               const int32_t* idx, const float* val, float* work, float* out);

// Prefill, columns [n0, n1) (n0 a multiple of column_block): for every tile and token t,
//   y[(tile.y_row + t) * ldy + n] = bias[n] (or 0) + sum_u xs[u, t] * W[idx[u], n].
// Each column block of the rows in used_rows (the union of the tiles' rows) is first
// dequantized into pack[row * column_block ...] (room for K * column_block floats).
using NbitsTilesFn = void (*)(const NbitsWeight& w, int64_t n0, int64_t n1, const TileDesc* tiles,
                              int64_t num_tiles, const int32_t* used_rows, int64_t num_used, float* pack,
                              const float* bias, float* y, int64_t ldy);

struct NbitsKernels {
  int32_t column_block;                   // columns per prefill micro-block
  NbitsDecodeFn decode_float[kNumDTypes];  // float arithmetic (accuracy_level 0), by scale type
  NbitsDecodeFn decode_int8[kNumDTypes];   // int8 activations per block; nullptr where the ISA has none
  NbitsTilesFn tiles[kNumDTypes];
};

}  // namespace wina

// The decode path of the CUDA kernels (M <= kMaxDecodeTokens): one fused kernel scores and
// gates the rows of a K slab for every token, lists in shared memory the rows kept by any
// token, and multiplies only those rows into per-slab partial sums; a reduction kernel adds
// the slabs in a fixed order, adds the bias and rounds to T (or, with a cluster plan, the
// cluster's blocks add their slabs in shared memory and write Y). Kernels in decode.cu.
#pragma once

#include <cstdint>

#include "cuda/gating.cuh"
#include "cuda/launchers.cuh"

namespace wina {
namespace cuda {

// The weights of one call as the kernels see them (one for WinaSparseMatMul, up to
// kMaxSegments for the grouped op), passed as a __grid_constant__ parameter. Weight s owns
// column tiles [tile_begin[s], tile_begin[s + 1]) of the grid and columns
// [col_begin[s], col_begin[s + 1]) of the partial sums.
struct Table {
  int count;
  int tile_begin[kMaxSegments + 1];
  int64_t col_begin[kMaxSegments + 1];
  const void* b[kMaxSegments];
  const float* scale[kMaxSegments];
  const float* threshold[kMaxSegments];
  const void* bias[kMaxSegments];
  void* y[kMaxSegments];
};

// The kernels' parameter for WinaSparseMatMul: one weight, as small as before the grouped op
// existed (the Table parameter and its lookups cost the single op a few percent).
struct OneWeight {
  const void* b;
  const float* scale;
  const float* threshold;
  const void* bias;
  void* y;
  int64_t n;  // the weight's columns
};

// One decode call: X, its shape, and the weights' table.
struct DecodeCall {
  const void* x = nullptr;
  int64_t M = 0, K = 0;
  int64_t n_total = 0;  // columns of all weights together
  int tiles = 0;        // grid columns: every weight's column tiles
  Table table = {};
  bool grouped() const { return table.count > 1; }
  // The single weight's parameter (count == 1).
  OneWeight one() const {
    return {table.b[0], table.scale[0], table.threshold[0], table.bias[0], table.y[0], n_total};
  }
};

// Appends weight (b, scale, threshold, bias, y) of N columns to the call's table.
template <typename T>
void add_weight(DecodeCall& c, const void* b, const float* scale, const float* threshold, const void* bias, void* y,
                int64_t N) {
  Table& t = c.table;
  const int s = t.count++;
  t.b[s] = b;
  t.scale[s] = scale;
  t.threshold[s] = threshold;
  t.bias[s] = bias;
  t.y[s] = y;
  t.tile_begin[s] = c.tiles;
  t.col_begin[s] = c.n_total;
  c.tiles += static_cast<int>(column_tiles(N, sizeof(T)));
  c.n_total += N;
  t.tile_begin[s + 1] = c.tiles;
  t.col_begin[s + 1] = c.n_total;
}

// A call over X [M, K] without weights yet.
inline DecodeCall empty_call(const void* x, int64_t M, int64_t K) {
  DecodeCall c;
  c.x = x;
  c.M = M;
  c.K = K;
  return c;
}

template <typename T>
DecodeCall single_call(const Problem& p) {
  DecodeCall c = empty_call(p.x, p.M, p.K);
  add_weight<T>(c, p.b, p.score_scale, p.threshold, p.bias, p.y, p.N);
  return c;
}

template <typename T>
DecodeCall group_call(const GroupProblem& g) {
  DecodeCall c = empty_call(g.x, g.M, g.K);
  for (int s = 0; s < g.count; ++s) {
    const Segment& w = g.segments[s];
    add_weight<T>(c, w.b, w.score_scale, w.threshold, w.bias, w.y, w.N);
  }
  return c;
}

// Enqueues the decode kernel of call c under `plan` (gating rule G), writing per-slab partial
// sums [splits, M, n_total] to `partial` (or, for a cluster plan, Y itself).
template <typename T, Gating G>
cudaError_t launch_decode(const DecodeCall& c, const Plan& plan, const Gate& gate, float* partial, Stream stream);

// Enqueues the reduction: Y = T(sum over `splits` slabs of partial (+ bias)); splits == 0
// writes the bias (or zeros), the K == 0 case.
template <typename T>
cudaError_t launch_reduce(const DecodeCall& c, const float* partial, int splits, bool pdl, Stream stream);

}  // namespace cuda
}  // namespace wina

// What one call of the CUDA kernels computes (Problem, GroupProblem) and how it is split
// into blocks (Plan), with the choice of the plan. Host-only and free of CUDA headers, so
// that the plan logic is unit-tested on any machine (custom_ops/tests/cuda_plan_test.cc);
// the kernels read the block-shape constants below.
#pragma once

#include <cstddef>
#include <cstdint>

#include "gating.h"

namespace wina {
namespace cuda {

// Most tokens the fused decode kernel takes; more go through the prefill path.
inline constexpr int64_t kMaxDecodeTokens = 8;
// Rows of B in one K slab of the decode kernel at most.
inline constexpr int64_t kMaxSlabRows = 512;
// Weights of one grouped call at most (the decode kernel's weight table).
inline constexpr int kMaxSegments = 8;
// Threads of a decode block, and of them the threads across a column tile (each loads 16
// bytes of a row): a column tile is kColThreads * 16 bytes of every kept row.
inline constexpr int kDecodeThreads = 256;
inline constexpr int kColThreads = 64;

// One call, in the flattened view X [M, K] x B [K, N]; every pointer is device memory.
struct Problem {
  const void* x = nullptr;             // [M, K], T
  const void* b = nullptr;             // [K, N], T, row-major
  const float* score_scale = nullptr;  // [K]
  const float* threshold = nullptr;    // scalar, GatingParam::kThreshold rules
  const int64_t* k = nullptr;          // scalar, GatingParam::kK rules
  const void* bias = nullptr;          // [N], T, or nullptr
  void* y = nullptr;                   // [M, N], T
  int64_t M = 0, K = 0, N = 0;
  Gating gating = Gating::kThreshold;
};

// How a call is split into blocks; MakePlan chooses one, a benchmark may override it.
// docs/cuda-notes.md has the measurements behind each choice.
struct Plan {
  bool decode = true;        // fused decode path (M <= kMaxDecodeTokens), else prefill
  int64_t rows_per_split = 0;  // decode: rows of B per K slab (a multiple of 32, <= kMaxSlabRows)
  int64_t splits = 0;        // decode: number of K slabs = ceil(K / rows_per_split)
  bool vectorized = false;   // decode: 16-byte loads (N * sizeof(T) % 16 == 0, aligned B)
  int unroll = 4;            // decode: weight rows a thread loads per batch (4, 8; 16 for one token)
  int stages = 1;            // decode, 16-byte loads, <= 2 tokens: batches in flight (2, the default
                             // there: load the next batch while multiplying this one)
  bool pdl = false;          // programmatic dependent launch (sm_90+) of the kernels of the
                             // decode path: each waits (griddepcontrol.wait) for the kernel
                             // before it on the stream, whose tail hides its launch
  bool pdl_first = false;    // threshold: the decode kernel too, after the previous op's kernel
  bool l2_hints = true;      // decode: weight rows evict_first, score scales evict_last in the L2
  int prefetch_rows = 0;     // decode, 16-byte loads: each block prefetches the first
                             // prefetch_rows kept rows of its slab into the L2 as it lists them
  int cluster = 0;           // decode, sm_90, <= 2 tokens, 16-byte loads: 0, or the splits (2, 4
                             // or 8) of a column tile as one thread-block cluster that adds its
                             // slabs in shared memory and writes Y (no partial sums in the
                             // workspace, no reduction kernel)
};

struct DeviceInfo {
  int sm_count = 0;
  int cc_major = 0;
};

// The grouped form (WinaSparseMatMulGroup): several weights that read the same X, threshold
// gating, each with its own score scale, threshold, bias and output. One decode kernel covers
// the column tiles of every weight (each block gates its slab with its weight's scale and
// threshold) and one reduction kernel writes every output: one launch pair instead of one per
// weight, and a grid that fills the GPU where a single small weight (k/v) would not.
struct Segment {
  const void* b = nullptr;             // [K, N], T, row-major
  const float* score_scale = nullptr;  // [K]
  const float* threshold = nullptr;    // scalar
  const void* bias = nullptr;          // [N], T, or nullptr
  void* y = nullptr;                   // [M, N], T
  int64_t N = 0;
};

struct GroupProblem {
  const void* x = nullptr;  // [M, K], T
  int64_t M = 0, K = 0;
  int count = 0;            // weights, 1 .. kMaxSegments
  Segment segments[kMaxSegments];
};

// Weight s of a group as a single threshold-gated problem (the prefill path runs them one by one).
inline Problem SegmentProblem(const GroupProblem& g, int s) {
  Problem p;
  p.x = g.x;
  p.b = g.segments[s].b;
  p.score_scale = g.segments[s].score_scale;
  p.threshold = g.segments[s].threshold;
  p.bias = g.segments[s].bias;
  p.y = g.segments[s].y;
  p.M = g.M;
  p.K = g.K;
  p.N = g.segments[s].N;
  p.gating = Gating::kThreshold;
  return p;
}

// ---------------------------------------------------------------------------------
// Plan selection (plan.cc). elem_bytes is sizeof(T) of the element type T (4 or 2).

// The plan for a problem on a device. blocks_per_sm: decode blocks to aim for per
// multiprocessor (0: the built-in default, 2).
Plan make_plan(const Problem& p, size_t elem_bytes, const DeviceInfo& device, int blocks_per_sm = 0);
Plan make_group_plan(const GroupProblem& g, size_t elem_bytes, const DeviceInfo& device, int blocks_per_sm = 0);

// The decode plan for M tokens over K rows and `tiles` column tiles (all weights together).
Plan decode_plan(int64_t M, int64_t K, int64_t tiles, bool vectorized, const DeviceInfo& device, int blocks_per_sm);

// A decode plan the kernels cannot run (bad slab size or count, a cluster plan out of its limits).
bool bad_decode_plan(const Plan& plan, int64_t M, int64_t K);

// Bytes of device scratch a plan needs (0 allowed: then the workspace may be nullptr).
// Workspace: [gate keys, gate cuts] (top-k), then the partial sums (decode) or the gated X
// (prefill), each part aligned to kWorkspaceAlign bytes.
size_t workspace_bytes(const Problem& p, const Plan& plan, size_t elem_bytes);
size_t group_workspace_bytes(const GroupProblem& g, const Plan& plan);

inline constexpr size_t kWorkspaceAlign = 256;
size_t align_up(size_t n);
size_t gate_bytes(const Problem& p);                                    // the top-k rule, per token
size_t partial_bytes(const Plan& plan, int64_t M, int64_t n_total);     // decode partial sums

// Columns of a decode column tile, column tiles of an N-column weight, and whether its rows
// can be read 16 bytes at a time (whole vectors per row, a 16-byte aligned base).
constexpr int64_t tile_columns(size_t elem_bytes) { return kColThreads * static_cast<int64_t>(16 / elem_bytes); }
int64_t column_tiles(int64_t n, size_t elem_bytes);
bool vectorizable(const void* b, int64_t N, size_t elem_bytes);

}  // namespace cuda
}  // namespace wina

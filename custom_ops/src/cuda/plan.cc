// Plan selection of the CUDA kernels (plan.h): host-only, no CUDA. The measurements behind
// each rule are in docs/cuda-notes.md ("Plan selection").
#include "cuda/plan.h"

#include <algorithm>
#include <cstdint>

namespace wina {
namespace cuda {

namespace {

// Every slab of a cluster plan is one block of the cluster.
constexpr int kClusterSlabs = 8;
// Kept rows a block prefetches into the L2 while it lists the rest of its slab.
constexpr int kPrefetchRows = 24;

}  // namespace

size_t align_up(size_t n) { return (n + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign; }

size_t gate_bytes(const Problem& p) {
  return p.gating == Gating::kTopK ? 2 * align_up(static_cast<size_t>(p.M) * 4) : 0;
}

int64_t column_tiles(int64_t n, size_t elem_bytes) {
  const int64_t cols = tile_columns(elem_bytes);
  return (n + cols - 1) / cols;
}

bool vectorizable(const void* b, int64_t N, size_t elem_bytes) {
  return N % static_cast<int64_t>(16 / elem_bytes) == 0 && reinterpret_cast<uintptr_t>(b) % 16 == 0;
}

Plan decode_plan(int64_t M, int64_t K, int64_t tiles, bool vectorized, const DeviceInfo& device, int blocks_per_sm) {
  Plan plan;
  plan.decode = M <= kMaxDecodeTokens;
  plan.pdl = device.cc_major >= 9;
  if (!plan.decode || M == 0 || K == 0 || tiles == 0) return plan;
  plan.vectorized = vectorized;
  // Two blocks per multiprocessor by default, and at most that many blocks (floor): a grid a
  // little over it runs a partial wave.
  const int64_t target = static_cast<int64_t>(blocks_per_sm > 0 ? blocks_per_sm : 2) * std::max(device.sm_count, 1);
  const int64_t want_splits = std::max<int64_t>(1, target / tiles);
  int64_t rows = (K + want_splits - 1) / want_splits;
  rows = (rows + 31) / 32 * 32;
  rows = std::min<int64_t>(std::max<int64_t>(rows, 64), kMaxSlabRows);
  // The threshold decode kernel is PDL-launched after the previous op only on narrow outputs
  // (few column tiles): there it hides the launch, on wide split-K grids it costs more.
  plan.pdl_first = plan.pdl && tiles <= 16;
  plan.rows_per_split = rows;
  plan.splits = (K + rows - 1) / rows;
  // Up to two tokens: batches of 4 rows a thread, the next batch loading while one is
  // multiplied (the same shared memory as one batch of 8, never empty of loads).
  plan.unroll = 4;
  plan.stages = M <= 2 ? 2 : 1;
  // A cluster plan where one cluster of 8 slabs (of at most kMaxSlabRows rows) per column tile
  // gives 1.5 to 2 blocks per SM: each tile's slabs are added in the cluster's shared memory,
  // so no partial sums leave the SMs and no reduction kernel follows. The narrower outputs have
  // too few tiles for it.
  const int64_t cluster_blocks = tiles * kClusterSlabs;
  if (device.cc_major >= 9 && vectorized && M <= 2 && blocks_per_sm <= 0 && K <= kClusterSlabs * kMaxSlabRows &&
      2 * cluster_blocks >= 3 * device.sm_count && cluster_blocks <= 2 * device.sm_count) {
    plan.cluster = kClusterSlabs;
    plan.rows_per_split = ((K + kClusterSlabs - 1) / kClusterSlabs + 31) / 32 * 32;
    plan.splits = (K + plan.rows_per_split - 1) / plan.rows_per_split;
    if (plan.splits != kClusterSlabs) {  // a K too short for 8 slabs of whole 32-row groups
      plan.cluster = 0;
      plan.rows_per_split = rows;
      plan.splits = (K + rows - 1) / rows;
    }
  }
  // Slabs listed in more than one gating round: the first kept rows are prefetched into the
  // L2 after the first round.
  if (device.cc_major >= 9 && vectorized && plan.rows_per_split > kDecodeThreads) plan.prefetch_rows = kPrefetchRows;
  // A cluster plan is one kernel a call (no reduction kernel after it): PDL-launched after the
  // previous op whatever its width.
  if (plan.cluster > 0) plan.pdl_first = plan.pdl;
  return plan;
}

size_t partial_bytes(const Plan& plan, int64_t M, int64_t n_total) {
  if (plan.cluster > 0) return 0;  // the slabs are added in the cluster's shared memory
  return align_up(static_cast<size_t>(plan.splits) * static_cast<size_t>(M) * static_cast<size_t>(n_total) * 4);
}

bool bad_decode_plan(const Plan& plan, int64_t M, int64_t K) {
  const bool bad_cluster = plan.cluster != 0 && ((plan.cluster != 2 && plan.cluster != 4 && plan.cluster != 8) ||
                                                 plan.splits != plan.cluster || !plan.vectorized || M > 2);
  return bad_cluster || M > kMaxDecodeTokens || plan.rows_per_split <= 0 || plan.rows_per_split > kMaxSlabRows ||
         plan.rows_per_split % 32 != 0 || plan.splits != (K + plan.rows_per_split - 1) / plan.rows_per_split ||
         plan.splits > 65535;
}

Plan make_plan(const Problem& p, size_t elem_bytes, const DeviceInfo& device, int blocks_per_sm) {
  if (p.N == 0) return decode_plan(p.M, p.K, 0, false, device, blocks_per_sm);
  return decode_plan(p.M, p.K, column_tiles(p.N, elem_bytes), vectorizable(p.b, p.N, elem_bytes), device,
                     blocks_per_sm);
}

Plan make_group_plan(const GroupProblem& g, size_t elem_bytes, const DeviceInfo& device, int blocks_per_sm) {
  int64_t tiles = 0;
  bool vectorized = true;
  for (int s = 0; s < g.count; ++s) {
    tiles += column_tiles(g.segments[s].N, elem_bytes);
    vectorized = vectorized && vectorizable(g.segments[s].b, g.segments[s].N, elem_bytes);
  }
  return decode_plan(g.M, g.K, tiles, vectorized, device, blocks_per_sm);
}

size_t workspace_bytes(const Problem& p, const Plan& plan, size_t elem_bytes) {
  if (p.M == 0 || p.N == 0 || p.K == 0) return 0;
  size_t bytes = gate_bytes(p);
  if (plan.decode) {
    bytes += partial_bytes(plan, p.M, p.N);
  } else {
    bytes += align_up(static_cast<size_t>(p.M) * static_cast<size_t>(p.K) * elem_bytes);
  }
  return bytes;
}

size_t group_workspace_bytes(const GroupProblem& g, const Plan& plan) {
  int64_t n_total = 0;
  for (int s = 0; s < g.count; ++s) n_total += g.segments[s].N;
  if (g.M == 0 || g.K == 0 || n_total == 0) return 0;
  return partial_bytes(plan, g.M, n_total);
}

}  // namespace cuda
}  // namespace wina

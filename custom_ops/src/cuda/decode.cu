// Kernels of the decode path (decode.cuh) and their launch ladder: the plan's fields become
// template arguments (tokens, 16-byte loads, rows a batch, batches in flight).
#include "cuda/decode.cuh"

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/gating.cuh"

namespace wina {
namespace cuda {
namespace {

constexpr int kRowGroups = kDecodeThreads / kColThreads;    // threads along the rows
constexpr int kGateRows = kMaxSlabRows / kDecodeThreads;    // slab rows a thread gates
constexpr int kMaxClusterSlabs = 8;                         // Plan::cluster is 0, 2, 4 or 8
static_assert(kMaxSlabRows % kDecodeThreads == 0, "whole gating rounds");

template <typename T>
__host__ __device__ constexpr int vec_elems() {
  return 16 / static_cast<int>(sizeof(T));
}
template <typename T>
__host__ __device__ constexpr int tile_cols() {
  return kColThreads * vec_elems<T>();
}
static_assert(tile_cols<float>() == tile_columns(sizeof(float)) && tile_cols<__half>() == tile_columns(sizeof(__half)),
              "plan.h's column tiles are the kernel's");

// The weight owning grid column tile v (begin = t.tile_begin) or partial-sum column v
// (begin = t.col_begin): the last weight whose range starts at or before v.
template <typename I>
__device__ __forceinline__ int segment_of(const Table& t, const I (&begin)[kMaxSegments + 1], int64_t v) {
  int s = 0;
#pragma unroll
  for (int i = 1; i < kMaxSegments; ++i)
    if (i < t.count && v >= begin[i]) s = i;
  return s;
}

// What a block needs of its weight, whichever parameter the kernel was given.
struct WeightView : OneWeight {
  int64_t col_begin;  // its first column among all the weights' partial sums
  int tile_begin;     // its first column tile in the grid
};

__device__ __forceinline__ WeightView weight_view(const OneWeight& w, int /*tile*/, int64_t /*col*/, bool /*by_tile*/) {
  return {w, 0, 0};
}

// Weight of grid column tile `tile` (by_tile) or of partial-sum column `col`.
__device__ __forceinline__ WeightView weight_view(const Table& t, int tile, int64_t col, bool by_tile) {
  const int s = by_tile ? segment_of(t, t.tile_begin, tile) : segment_of(t, t.col_begin, col);
  const OneWeight one = {t.b[s], t.scale[s], t.threshold[s], t.bias[s], t.y[s], t.col_begin[s + 1] - t.col_begin[s]};
  return {one, t.col_begin[s], t.tile_begin[s]};
}

// Block (tile, split): columns [tile * TN, +TN) of the partial sums of rows
// [split * rows_per_split, +rows_per_split), for every token.
// partial: [splits, M, N] float32.
// U: rows a thread loads per batch; S: batches in flight (1: load, wait, multiply; 2: the next
// batch is loaded while this one is multiplied), through S * U * 4 KiB of dynamic shared memory
// (VEC only); W: OneWeight or Table.
template <typename T, int MT, bool VEC, Gating GATING, int U, typename W, int S = 1>
__global__ void __launch_bounds__(kDecodeThreads, 2)  // (256, 2): no spills (ptxas chose 32 registers and spilled)
    decode_partial_kernel(const T* __restrict__ x, const __grid_constant__ W weights, Gate gate,
                          float* __restrict__ partial, int M, int K, int64_t n_total, int rows_per_split,
                          int l2_hints, int cluster, int prefetch_rows) {
  constexpr int V = vec_elems<T>();
  constexpr int TN = tile_cols<T>();
  __shared__ int s_rows[kMaxSlabRows];
  __shared__ float s_x[MT][kMaxSlabRows];
  __shared__ int s_warp_count[kDecodeThreads / 32];
  __shared__ __align__(16) float s_red[kRowGroups - 1][TN];

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int split = blockIdx.y;
  const int r0 = split * rows_per_split;
  const int r1 = min(r0 + rows_per_split, K);
  // This block's weight: its rows, scale, threshold, and where its columns go.
  const WeightView w = weight_view(weights, blockIdx.x, 0, true);
  const T* __restrict__ b = static_cast<const T*>(w.b);
  const float* __restrict__ scale = w.scale;
  const int64_t N = w.n;
  const int tile = blockIdx.x - w.tile_begin;
  if (GATING == Gating::kThreshold) gate.threshold = w.threshold;

  // With L2 hints the score scales stay in the L2 (evict_last) and the weight rows, read once a
  // call, leave it first: the next call's gating then reads its scales from the L2, not DRAM.
  const bool hints = l2_hints != 0;
  const uint64_t keep_policy = hints ? l2_policy_keep() : l2_policy(false);
  grid_dependency_wait();  // PDL: x (and the top-k rule) come from the kernels before
  // The slab's scales and every token's x (at most kGateRows rows a thread): all loads are
  // issued before the first use, so gating costs one round trip to the L2.
  float sc[kGateRows];
  float xs[kGateRows][MT];
#pragma unroll
  for (int q = 0; q < kGateRows; ++q) {
    const int r = r0 + q * kDecodeThreads + tid;
    sc[q] = r < r1 ? load_float(scale + r, keep_policy) : 0.0f;
#pragma unroll
    for (int m = 0; m < MT; ++m)
      xs[q][m] = (m < M && r < r1) ? Elem<T>::to_float(x[static_cast<int64_t>(m) * K + r]) : 0.0f;
  }
  uint32_t gate_key[MT];
  int gate_cut[MT];
  token_gates<GATING>(gate, M, gate_key, gate_cut);

  // 1. Gate the slab's rows for every token; list the rows kept by any token, in order.
  const int count = compact_slab<kDecodeThreads>(
      xs, sc, r0, r1, M, gate_key, gate_cut, tid, lane, warp, s_warp_count, [&](int pos, int r, const float(&xv)[MT]) {
        s_rows[pos] = r;
        if constexpr (VEC) {
          // The slab's first prefetch_rows kept rows start streaming into the L2 now: their DRAM
          // latency then overlaps the listing of the rest of the slab.
          const int64_t col0 = static_cast<int64_t>(tile) * TN;
          if (pos < prefetch_rows && col0 < N) {
            const char* row = reinterpret_cast<const char*>(b + static_cast<int64_t>(r) * N + col0);
            const int64_t bytes = (N - col0 < TN ? N - col0 : TN) * static_cast<int64_t>(sizeof(T));
            for (int64_t o = 0; o < bytes; o += 128) prefetch_line_l2(row + o);
          }
        }
#pragma unroll
        for (int m = 0; m < MT; ++m) s_x[m][pos] = xv[m];
      });
  allow_dependent_launch();

  // 2. Multiply: row group rg takes kept rows rg, rg + kRowGroups, ...
  const int ct = tid % kColThreads;
  const int rg = tid / kColThreads;
  const int64_t col = static_cast<int64_t>(tile) * TN + static_cast<int64_t>(ct) * V;
  float acc[MT][V];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int v = 0; v < V; ++v) acc[m][v] = 0.0f;

  if (col < N) {
    if constexpr (VEC) {
      // Batches of U rows a thread, each row 16 bytes, through shared memory; each thread
      // reads back only its own slots, so no barrier is needed.
      extern __shared__ uint4 s_w[];  // [S][U][kDecodeThreads]
      const T* bcol = b + col;
      const uint64_t stream_policy = l2_policy(hints);
      auto load = [&](int j0, int stage) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int j = j0 + u * kRowGroups;
          if (j < count)
            copy16_async(&s_w[(stage * U + u) * kDecodeThreads + tid], bcol + static_cast<int64_t>(s_rows[j]) * N,
                         stream_policy);
        }
        commit_async_copies();
      };
      auto multiply = [&](int j0, int stage) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int j = j0 + u * kRowGroups;
          if (j >= count) break;
          float f[V];
          Elem<T>::unpack(s_w[(stage * U + u) * kDecodeThreads + tid], f);
#pragma unroll
          for (int m = 0; m < MT; ++m) {
            const float xm = s_x[m][j];
#pragma unroll
            for (int v = 0; v < V; ++v) acc[m][v] = fmaf(xm, f[v], acc[m][v]);
          }
        }
      };
      constexpr int kBatch = U * kRowGroups;
      if constexpr (S == 1) {
        for (int j0 = rg; j0 < count; j0 += kBatch) {
          load(j0, 0);
          wait_async_groups<0>();
          multiply(j0, 0);
        }
      } else {
        int stage = 0;
        if (rg < count) load(rg, 0);
        for (int j0 = rg; j0 < count; j0 += kBatch) {
          if (j0 + kBatch < count) {
            load(j0 + kBatch, stage ^ 1);
            wait_async_groups<1>();
          } else {
            wait_async_groups<0>();
          }
          multiply(j0, stage);
          stage ^= 1;
        }
      }
    } else {
      for (int j = rg; j < count; j += kRowGroups) {
        const T* brow = b + static_cast<int64_t>(s_rows[j]) * N;
        float f[V];
#pragma unroll
        for (int v = 0; v < V; ++v) f[v] = col + v < N ? Elem<T>::to_float(brow[col + v]) : 0.0f;
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          const float xm = s_x[m][j];
#pragma unroll
          for (int v = 0; v < V; ++v) acc[m][v] = fmaf(xm, f[v], acc[m][v]);
        }
      }
    }
  }

  // 3. Add the row groups in a fixed order and store the slab's partial sums: to the partial-sum
  // workspace, or (cluster > 0) to this block's shared memory, where the cluster's blocks (the
  // tile's K slabs) add them up below.
  float* s_part = nullptr;  // [MT][TN] over the dynamic shared memory, free after the product loop
  if constexpr (VEC && MT <= 2) {
    extern __shared__ uint4 s_w[];
    s_part = reinterpret_cast<float*>(s_w);
  }
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    if (m >= M) break;
    if (rg > 0) {
#pragma unroll
      for (int v = 0; v < V; ++v) s_red[rg - 1][ct * V + v] = acc[m][v];
    }
    __syncthreads();
    if (rg == 0 && col < N) {
      float* out = cluster > 0 ? s_part + m * TN + ct * V
                               : partial + (static_cast<int64_t>(split) * M + m) * n_total + w.col_begin + col;
      float sum[V];
#pragma unroll
      for (int v = 0; v < V; ++v) {
        float s = acc[m][v];
#pragma unroll
        for (int g = 0; g < kRowGroups - 1; ++g) s += s_red[g][ct * V + v];
        sum[v] = s;
      }
      if constexpr (VEC) {
#pragma unroll
        for (int v = 0; v < V; v += 4)
          *reinterpret_cast<float4*>(out + v) = make_float4(sum[v], sum[v + 1], sum[v + 2], sum[v + 3]);
      } else {
#pragma unroll
        for (int v = 0; v < V; ++v)
          if (col + v < N) out[v] = sum[v];
      }
    }
    __syncthreads();
  }
  if constexpr (VEC && MT <= 2) {
    if (cluster > 0) {
      // The cluster is this tile's `cluster` slabs; block rank r adds columns [r, r + 1) * TN /
      // cluster of every slab, in slab order (deterministic), adds the bias and writes Y.
      cluster_barrier();  // every slab's sums are in its block's shared memory
      const int per_rank = TN / cluster;
      const int first = static_cast<int>(cluster_rank()) * per_rank;
      const T* __restrict__ bias = static_cast<const T*>(w.bias);
      T* __restrict__ y = static_cast<T*>(w.y);
      for (int e = tid; e < M * per_rank; e += kDecodeThreads) {
        const int m = e / per_rank;
        const int c = first + e % per_rank;
        const int64_t gcol = static_cast<int64_t>(tile) * TN + c;
        if (gcol < N) {
          // All the slabs' loads first, then the sums in slab order: one DSMEM round trip, not
          // one per slab (the loop over a run-time count was not unrolled).
          float part[kMaxClusterSlabs];
#pragma unroll
          for (int q = 0; q < kMaxClusterSlabs; ++q)
            part[q] = q < cluster ? load_cluster_shared(s_part + m * TN + c, static_cast<unsigned>(q)) : 0.0f;
          float total = 0.0f;
#pragma unroll
          for (int q = 0; q < kMaxClusterSlabs; ++q)
            if (q < cluster) total += part[q];
          if (bias != nullptr) total += Elem<T>::to_float(bias[gcol]);
          y[static_cast<int64_t>(m) * N + gcol] = Elem<T>::from_float(total);
        }
      }
      cluster_barrier();  // no block leaves while another still reads its shared memory
    }
  }
}

// y[m, n] = T(sum over splits of partial[s, m, n] (+ bias[n])), summed in a fixed order.
// splits == 0 writes the bias (or zeros): the K == 0 case.
constexpr int kReduceCols = 32;
constexpr int kReduceLanes = 8;

template <typename T, typename W>
__global__ void __launch_bounds__(kReduceCols * kReduceLanes)
    reduce_splits_kernel(const float* __restrict__ partial, int splits, const __grid_constant__ W weights, int M,
                         int64_t n_total) {
  __shared__ float s_sum[kReduceLanes][kReduceCols + 1];
  grid_dependency_wait();
  // The next kernel on the stream (the next op's decode or select kernel, PDL-launched) may
  // be scheduled now; it waits for this grid's completion before reading anything.
  allow_dependent_launch();
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kReduceCols + threadIdx.x;
  // Column n of the partial sums is column n - col_begin[seg] of weight seg's output.
  const WeightView w = weight_view(weights, 0, n, false);
  const int64_t seg_n = w.n;
  const int64_t local = n - w.col_begin;
  const T* __restrict__ bias = static_cast<const T*>(w.bias);
  T* __restrict__ y = static_cast<T*>(w.y);
  reduce_splits(partial, splits, M, n_total, n, s_sum, bias, y, seg_n, local);
}

template <typename T, int MT, bool VEC, Gating GATING, int U, typename W, int S, typename P>
cudaError_t launch_decode_kernel(const DecodeCall& c, const P& weights, const Plan& plan, bool pdl, const Gate& gate,
                                 float* partial, Stream stream) {
  const dim3 grid(static_cast<unsigned>(c.tiles), static_cast<unsigned>(plan.splits));
  const size_t smem = VEC ? static_cast<size_t>(S) * U * kDecodeThreads * 16 : 0;
  auto* kernel = decode_partial_kernel<T, MT, VEC, GATING, U, W, S>;
  static std::atomic<uint64_t> smem_done{0};  // one per instantiation, i.e. per kernel
  // S batches of U rows of 16 bytes per thread (VEC); up to 32 KiB it fits under the default
  // 48 KiB with the kernel's static 10-16 KiB.
  if (smem > 32 * 1024) {
    const cudaError_t err = allow_dynamic_smem_once(kernel, smem, smem_done);
    if (err != cudaSuccess) return err;
  }
  const int cluster = VEC && MT <= 2 ? plan.cluster : 0;
  return launch_clustered(stream, kernel, grid, dim3(kDecodeThreads), smem, pdl, static_cast<unsigned>(cluster),
                          static_cast<const T*>(c.x), weights, gate, partial, static_cast<int>(c.M),
                          static_cast<int>(c.K), c.n_total, static_cast<int>(plan.rows_per_split),
                          plan.l2_hints ? 1 : 0, cluster, static_cast<int>(plan.prefetch_rows));
}

template <typename T, int MT, Gating GATING, int U, typename W, typename P>
cudaError_t launch_decode_w(const DecodeCall& c, const P& weights, const Plan& plan, bool pdl, const Gate& gate,
                            float* partial, Stream stream) {
  if (!plan.vectorized)
    return launch_decode_kernel<T, MT, false, GATING, U, W, 1>(c, weights, plan, pdl, gate, partial, stream);
  if constexpr (MT <= 2) {
    if (plan.stages >= 2)
      return launch_decode_kernel<T, MT, true, GATING, U, W, 2>(c, weights, plan, pdl, gate, partial, stream);
  }
  return launch_decode_kernel<T, MT, true, GATING, U, W, 1>(c, weights, plan, pdl, gate, partial, stream);
}

template <typename T, int MT, Gating GATING, int U>
cudaError_t launch_decode_u(const DecodeCall& c, const Plan& plan, const Gate& gate, float* partial, Stream stream) {
  // Programmatically dependent (sm_90) on the kernel before it: the select kernel (top-k) or,
  // with pdl_first, whatever ran before on the stream (threshold); it waits for that one first.
  const bool pdl = plan.pdl && (GATING == Gating::kTopK || plan.pdl_first);
  if constexpr (GATING == Gating::kThreshold) {  // the grouped op gates by thresholds only
    if (c.grouped()) return launch_decode_w<T, MT, GATING, U, Table>(c, c.table, plan, pdl, gate, partial, stream);
  }
  if (c.grouped()) return cudaErrorInvalidValue;
  return launch_decode_w<T, MT, GATING, U, OneWeight>(c, c.one(), plan, pdl, gate, partial, stream);
}

// Rows in flight per thread: 4 or 8 for up to two tokens, 4 for more (shared memory).
template <typename T, int MT, Gating GATING>
cudaError_t launch_decode_mt(const DecodeCall& c, const Plan& plan, const Gate& gate, float* partial, Stream stream) {
  if constexpr (MT == 1) {
    if (plan.unroll >= 16) return launch_decode_u<T, MT, GATING, 16>(c, plan, gate, partial, stream);
  }
  if constexpr (MT <= 2) {
    if (plan.unroll >= 8) return launch_decode_u<T, MT, GATING, 8>(c, plan, gate, partial, stream);
  }
  return launch_decode_u<T, MT, GATING, 4>(c, plan, gate, partial, stream);
}

}  // namespace

template <typename T, Gating GATING>
cudaError_t launch_decode(const DecodeCall& c, const Plan& plan, const Gate& gate, float* partial, Stream stream) {
  if (c.M <= 1) return launch_decode_mt<T, 1, GATING>(c, plan, gate, partial, stream);
  if (c.M <= 2) return launch_decode_mt<T, 2, GATING>(c, plan, gate, partial, stream);
  if (c.M <= 4) return launch_decode_mt<T, 4, GATING>(c, plan, gate, partial, stream);
  return launch_decode_mt<T, 8, GATING>(c, plan, gate, partial, stream);
}

template <typename T>
cudaError_t launch_reduce(const DecodeCall& c, const float* partial, int splits, bool pdl, Stream stream) {
  const dim3 grid(static_cast<unsigned>((c.n_total + kReduceCols - 1) / kReduceCols),
                  static_cast<unsigned>(std::min<int64_t>(c.M, 65535)));
  const dim3 block(kReduceCols, kReduceLanes);
  if (c.grouped())
    return launch(stream, reduce_splits_kernel<T, Table>, grid, block, 0, pdl, partial, splits, c.table,
                  static_cast<int>(c.M), c.n_total);
  return launch(stream, reduce_splits_kernel<T, OneWeight>, grid, block, 0, pdl, partial, splits, c.one(),
                static_cast<int>(c.M), c.n_total);
}

#define WINA_INSTANTIATE_GATING(T, G) \
  template cudaError_t launch_decode<T, G>(const DecodeCall&, const Plan&, const Gate&, float*, Stream);
#define WINA_INSTANTIATE(T)                                                                  \
  WINA_CUDA_FOR_EACH_GATING(WINA_INSTANTIATE_GATING, T)                                      \
  template cudaError_t launch_reduce<T>(const DecodeCall&, const float*, int, bool, Stream);
WINA_CUDA_FOR_EACH_TYPE(WINA_INSTANTIATE)
#undef WINA_INSTANTIATE
#undef WINA_INSTANTIATE_GATING

}  // namespace cuda
}  // namespace wina

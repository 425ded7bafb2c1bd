// CUDA kernels of WinaSparseMatMul and their launchers (declared in wina_sparse_matmul_impl.cuh,
// which describes the algorithm). One explicit instantiation per element type at the end.
//
// Kernels are launched only through launch() below, which takes a Stream and refuses the
// default streams; cmake/cuda.cmake rejects the triple-chevron syntax in this folder.
#include "cuda/wina_sparse_matmul_impl.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <utility>

namespace wina {
namespace cuda {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;

// ---------------------------------------------------------------------------------
// Launching

// Launches kernel on stream; cluster_y > 0 groups its blocks into clusters of (1, cluster_y, 1)
// (sm_90).
template <typename... KernelArgs, typename... Args>
cudaError_t launch_clustered(Stream stream, void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem,
                             bool pdl, unsigned cluster_y, Args&&... args) {
  if (!stream.valid()) return cudaErrorInvalidResourceHandle;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream.get();
  cudaLaunchAttribute attribute[2];
  unsigned count = 0;
  if (pdl) {
    // The kernel may start while the previous one on the stream finishes; it waits
    // for it (grid_dependency_wait) before reading what that one wrote.
    attribute[count].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute[count].val.programmaticStreamSerializationAllowed = 1;
    ++count;
  }
  if (cluster_y > 0) {
    attribute[count].id = cudaLaunchAttributeClusterDimension;
    attribute[count].val.clusterDim.x = 1;
    attribute[count].val.clusterDim.y = cluster_y;
    attribute[count].val.clusterDim.z = 1;
    ++count;
  }
  config.attrs = count > 0 ? attribute : nullptr;
  config.numAttrs = count;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

template <typename... KernelArgs, typename... Args>
cudaError_t launch(Stream stream, void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem, bool pdl,
                   Args&&... args) {
  return launch_clustered(stream, kernel, grid, block, smem, pdl, 0u, std::forward<Args>(args)...);
}

// Programmatic dependent launch (sm_90+); no-ops elsewhere and when not launched that way.
__device__ __forceinline__ void grid_dependency_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Thread-block clusters (sm_90): a barrier over the cluster's blocks that orders their shared
// memory, the block's rank in its cluster, and a float read from the shared memory of the
// cluster's block `rank` at the address of `local` in this block.
__device__ __forceinline__ void cluster_barrier() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}

__device__ __forceinline__ unsigned cluster_rank() {
  unsigned rank = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
#endif
  return rank;
}

__device__ __forceinline__ float load_cluster_shared(const float* local, unsigned rank) {
  float v = 0.0f;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(local));
  unsigned remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(addr), "r"(rank));
  asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(remote) : "memory");
#endif
  return v;
}

// ---------------------------------------------------------------------------------
// Element types

template <typename T>
struct Elem;

template <>
struct Elem<float> {
  static __device__ __forceinline__ float to_float(float v) { return v; }
  static __device__ __forceinline__ float from_float(float v) { return v; }
  static __device__ __forceinline__ void unpack(const uint4& u, float* f) {
    f[0] = __uint_as_float(u.x);
    f[1] = __uint_as_float(u.y);
    f[2] = __uint_as_float(u.z);
    f[3] = __uint_as_float(u.w);
  }
};

template <>
struct Elem<__half> {
  static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
  static __device__ __forceinline__ void unpack(const uint4& u, float* f) {
    const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 t = __half22float2(h[i]);
      f[2 * i] = t.x;
      f[2 * i + 1] = t.y;
    }
  }
};

template <>
struct Elem<__nv_bfloat16> {
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
  static __device__ __forceinline__ void unpack(const uint4& u, float* f) {
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 t = __bfloat1622float2(h[i]);
      f[2 * i] = t.x;
      f[2 * i + 1] = t.y;
    }
  }
};

// L2 eviction policies (sm_80+): the weight rows are read once per call and should leave the
// L2 first, so that X, the score scales and the partial sums stay there across calls.
__device__ __forceinline__ uint64_t l2_policy(bool evict_first) {
  uint64_t policy;
  if (evict_first) {
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
  } else {
    asm volatile("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;" : "=l"(policy));
  }
  return policy;
}

__device__ __forceinline__ uint64_t l2_policy_keep() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(policy));
  return policy;
}

// 16 bytes global -> shared without registers (cp.async, sm_80+, L2 only) under an L2
// eviction policy: a thread can have many rows in flight, whatever register budget the
// compiler settles on.
__device__ __forceinline__ void copy16_async(void* smem, const void* gmem, uint64_t policy) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;" ::"r"(s), "l"(gmem), "l"(policy)
               : "memory");
}

// A read-only float through the L2 with an eviction policy.
__device__ __forceinline__ float load_float(const float* p, uint64_t policy) {
  float v;
  asm volatile("ld.global.nc.L2::cache_hint.f32 %0, [%1], %2;" : "=f"(v) : "l"(p), "l"(policy));
  return v;
}

// Starts reading the 128-byte line at gmem into the L2 (a hint: no data comes back).
__device__ __forceinline__ void prefetch_line_l2(const void* gmem) {
  asm volatile("prefetch.global.L2::evict_normal [%0];" ::"l"(gmem));
}

__device__ __forceinline__ void commit_async_copies() { asm volatile("cp.async.commit_group;" ::: "memory"); }

// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void wait_async_groups() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// ---------------------------------------------------------------------------------
// Gating

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
  const uint32_t* keys;    // kTopK: per token, from topk_select_kernel
  const int32_t* cuts;
};

template <Gating GATING>
__device__ __forceinline__ void token_gate(const Gate& gate, int m, uint32_t& key, int& cut) {
  if (GATING == Gating::kThreshold) {
    const float t = *gate.threshold;
    key = (t != t) ? 0xffffffffu : order_key(t);  // a NaN threshold keeps nothing
    cut = -1;
  } else {
    key = gate.keys[m];
    cut = gate.cuts[m];
  }
}

__device__ __forceinline__ bool keep(uint32_t key, int i, uint32_t gate_key, int gate_cut) {
  return key > gate_key || (key == gate_key && i <= gate_cut);
}

// ---------------------------------------------------------------------------------
// Block-wide helpers (blockDim.x == kSelectThreads)

constexpr int kSelectThreads = 1024;

// Exclusive prefix sum of v over the block in thread order; total over the block.
// s_scan holds 33 ints; the leading barrier makes back-to-back calls safe.
__device__ __forceinline__ int block_exclusive_scan(int v, int* s_scan, int& total) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  int inclusive = v;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const int other = __shfl_up_sync(kFullMask, inclusive, offset);
    if (lane >= offset) inclusive += other;
  }
  __syncthreads();
  if (lane == 31) s_scan[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    const int mine = lane < static_cast<int>(blockDim.x >> 5) ? s_scan[lane] : 0;
    int scan = mine;
#pragma unroll
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int other = __shfl_up_sync(kFullMask, scan, offset);
      if (lane >= offset) scan += other;
    }
    s_scan[lane] = scan - mine;
    if (lane == 31) s_scan[32] = scan;
  }
  __syncthreads();
  total = s_scan[32];
  return s_scan[warp] + inclusive - v;
}

// ---------------------------------------------------------------------------------
// Top-k (K < 65536): per token (one block each), the k-th largest key by a 2-pass radix
// select over 16-bit digits (65536 counters of 16 bits, packed in pairs in 128 KiB of shared
// memory), then the index of the last tie to keep.

constexpr int kSelectSmemBytes = 65536 * 2;

// The bin holding the `remaining`-th largest element, scanning bins from 65535 down.
// Thread t owns bins 65535 - 64 t ... 65535 - 64 t - 63; the owner's 64 bins are then
// scanned by warp 0. Result in s_sel: bin, elements in higher bins, elements in the bin.
__device__ __forceinline__ uint32_t bin_count(const uint32_t* hist, int bin) {
  return (hist[bin >> 1] >> ((bin & 1) * 16)) & 0xffffu;
}

__device__ __forceinline__ void find_bin(const uint32_t* hist, int remaining, int* s_scan, int* s_sel) {
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const uint4* words = reinterpret_cast<const uint4*>(hist) + (32736 - 32 * tid) / 4;
  int local = 0;
#pragma unroll
  for (int q = 0; q < 8; ++q) {
    const uint4 v = words[(q + lane) & 7];  // rotated: no bank conflicts among 8 lanes
    local += (v.x & 0xffffu) + (v.x >> 16) + (v.y & 0xffffu) + (v.y >> 16) + (v.z & 0xffffu) + (v.z >> 16) +
             (v.w & 0xffffu) + (v.w >> 16);
  }
  int total = 0;
  const int exclusive = block_exclusive_scan(local, s_scan, total);
  if (exclusive < remaining && remaining <= exclusive + local) {
    s_sel[3] = tid;
    s_sel[4] = exclusive;
  }
  __syncthreads();
  if (tid < 32) {
    const int hi = 65535 - 64 * s_sel[3];
    const int c0 = static_cast<int>(bin_count(hist, hi - 2 * lane));
    const int c1 = static_cast<int>(bin_count(hist, hi - 2 * lane - 1));
    int inclusive = c0 + c1;
#pragma unroll
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int other = __shfl_up_sync(kFullMask, inclusive, offset);
      if (lane >= offset) inclusive += other;
    }
    const int before = s_sel[4] + inclusive - c0 - c1;
    if (before < remaining && remaining <= before + c0 + c1) {
      const bool first = before + c0 >= remaining;
      s_sel[0] = first ? hi - 2 * lane : hi - 2 * lane - 1;
      s_sel[1] = first ? before : before + c0;
      s_sel[2] = first ? c0 : c1;
    }
  }
  __syncthreads();
}

__device__ __forceinline__ void zero_hist(uint32_t* hist) {
  uint4* h = reinterpret_cast<uint4*>(hist);
#pragma unroll
  for (int q = 0; q < kSelectSmemBytes / 16 / kSelectThreads; ++q) h[q * kSelectThreads + threadIdx.x] = make_uint4(0, 0, 0, 0);
}

template <typename T, int ITEMS>  // ITEMS > 0: K <= ITEMS * 1024, keys in registers
__global__ void __launch_bounds__(kSelectThreads)
    topk_select_kernel(const T* __restrict__ x, const float* __restrict__ scale, const int64_t* k_ptr, int K,
                       uint32_t* __restrict__ gate_keys, int32_t* __restrict__ gate_cuts) {
  extern __shared__ uint4 s_dynamic[];
  uint32_t* hist = reinterpret_cast<uint32_t*>(s_dynamic);
  __shared__ int s_scan[33];
  __shared__ int s_sel[5];
  __shared__ unsigned s_ballot[kSelectThreads / 32];
  __shared__ int s_found;
  __shared__ int s_total;
  grid_dependency_wait();  // x may come from the kernel before (PDL launch)
  allow_dependent_launch();

  const int m = blockIdx.x;
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const T* xr = x + static_cast<int64_t>(m) * K;
  const int64_t k_raw = *k_ptr;
  const int kk = static_cast<int>(k_raw < 0 ? 0 : (k_raw > K ? K : k_raw));

  constexpr int kRegItems = ITEMS > 0 ? ITEMS : 1;
  const int chunks = (K + kSelectThreads - 1) / kSelectThreads;
  uint32_t reg_keys[kRegItems];
  if constexpr (ITEMS > 0) {
#pragma unroll
    for (int j = 0; j < ITEMS; ++j) {
      const int i = j * kSelectThreads + tid;
      reg_keys[j] = i < K ? score_key(Elem<T>::to_float(xr[i]), scale[i]) : 0u;
    }
  }
  auto key_at = [&](int j, int i) -> uint32_t {
    if constexpr (ITEMS > 0) {
      uint32_t key = 0;
#pragma unroll
      for (int jj = 0; jj < ITEMS; ++jj)
        if (jj == j) key = reg_keys[jj];
      return key;
    } else {
      return score_key(Elem<T>::to_float(xr[i]), scale[i]);
    }
  };

  uint32_t key_t = 0;  // the rule: keep key > key_t || (key == key_t && i <= cut)
  int cut = -1;
  if (kk == 0) {
    key_t = 0xffffffffu;
  } else if (kk < K) {
    int remaining = kk;
    // Pass 1: the top 16 bits.
    zero_hist(hist);
    if (tid == 0) s_found = -1;
    __syncthreads();
#pragma unroll
    for (int j = 0; j < (ITEMS > 0 ? ITEMS : chunks); ++j) {
      const int i = j * kSelectThreads + tid;
      if (i < K) {
        const uint32_t bin = key_at(j, i) >> 16;
        atomicAdd(&hist[bin >> 1], 1u << ((bin & 1u) * 16));
      }
    }
    __syncthreads();
    find_bin(hist, remaining, s_scan, s_sel);
    const uint32_t high = static_cast<uint32_t>(s_sel[0]);
    remaining -= s_sel[1];
    if (s_sel[2] == remaining) {
      key_t = (high << 16) - 1;  // every key with these top bits, and all above (high > 0)
    } else {
      // Pass 2: the low 16 bits of the keys in that bin.
      __syncthreads();
      zero_hist(hist);
      __syncthreads();
#pragma unroll
      for (int j = 0; j < (ITEMS > 0 ? ITEMS : chunks); ++j) {
        const int i = j * kSelectThreads + tid;
        if (i < K) {
          const uint32_t key = key_at(j, i);
          if ((key >> 16) == high) {
            const uint32_t bin = key & 0xffffu;
            atomicAdd(&hist[bin >> 1], 1u << ((bin & 1u) * 16));
          }
        }
      }
      __syncthreads();
      find_bin(hist, remaining, s_scan, s_sel);
      const uint32_t kth = (high << 16) | static_cast<uint32_t>(s_sel[0]);
      remaining -= s_sel[1];
      if (s_sel[2] == remaining) {
        key_t = kth - 1;
      } else {
        // Keep the first `remaining` indices whose key is the k-th key.
        key_t = kth;
        int running = 0;
        for (int j = 0; j < chunks; ++j) {
          const int i = j * kSelectThreads + tid;
          const bool equal = i < K && key_at(j, i) == kth;
          const unsigned ballot = __ballot_sync(kFullMask, equal);
          if (lane == 0) s_ballot[warp] = ballot;
          __syncthreads();
          if (warp == 0) {
            const unsigned mine = s_ballot[lane];
            const int count = __popc(mine);
            int inclusive = count;
#pragma unroll
            for (int offset = 1; offset < 32; offset <<= 1) {
              const int other = __shfl_up_sync(kFullMask, inclusive, offset);
              if (lane >= offset) inclusive += other;
            }
            const int exclusive = inclusive - count;
            const int need = remaining - running;
            if (exclusive < need && need <= inclusive) {
              unsigned bits = mine;
              for (int t = exclusive + 1; t < need; ++t) bits &= bits - 1;
              s_found = j * kSelectThreads + lane * 32 + (__ffs(bits) - 1);
            }
            if (lane == 31) s_total = inclusive;
          }
          __syncthreads();
          if (s_found >= 0) break;
          running += s_total;
          __syncthreads();
        }
        cut = s_found;
      }
    }
  }
  if (tid == 0) {
    gate_keys[m] = key_t;
    gate_cuts[m] = cut;
  }
}

// ---------------------------------------------------------------------------------
// Decode: fused gating and split-K product over the kept rows.

constexpr int kDecodeThreads = 256;
constexpr int kColThreads = 64;                             // threads across a column tile
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

// The kernels' parameter for WinaSparseMatMul: one weight, as small as before the grouped
// op existed (a 400-byte Table parameter and its lookups cost the single op 2-5%: 4096x4096
// at 65% took 7.59 instead of 7.18 us in ORT's CUDA graphs on the H200).
struct OneWeight {
  const void* b;
  const float* scale;
  const float* threshold;
  const void* bias;
  void* y;
  int64_t n;
};

// What a block needs of its weight, whichever parameter the kernel was given.
struct WeightView {
  const void* b;
  const float* scale;
  const float* threshold;
  const void* bias;
  void* y;
  int64_t n;          // the weight's columns
  int64_t col_begin;  // its first column among all the weights' partial sums
  int tile_begin;     // its first column tile in the grid
};

__device__ __forceinline__ WeightView weight_view(const OneWeight& w, int /*tile*/, int64_t /*col*/, bool /*by_tile*/) {
  return {w.b, w.scale, w.threshold, w.bias, w.y, w.n, 0, 0};
}

// Weight of grid column tile `tile` (by_tile) or of partial-sum column `col`.
__device__ __forceinline__ WeightView weight_view(const Table& t, int tile, int64_t col, bool by_tile) {
  const int s = by_tile ? segment_of(t, t.tile_begin, tile) : segment_of(t, t.col_begin, col);
  return {t.b[s], t.scale[s], t.threshold[s], t.bias[s], t.y[s], t.col_begin[s + 1] - t.col_begin[s], t.col_begin[s],
          t.tile_begin[s]};
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
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    if (m < M) {
      token_gate<GATING>(gate, m, gate_key[m], gate_cut[m]);
    } else {
      gate_key[m] = 0xffffffffu;
      gate_cut[m] = -1;
    }
  }

  // 1. Gate the slab's rows for every token; list the rows kept by any token, in order.
  int count = 0;
#pragma unroll
  for (int q = 0; q < kGateRows; ++q) {
    const int rb = r0 + q * kDecodeThreads;
    if (rb >= r1) break;  // uniform over the block
    const int r = rb + tid;
    float xv[MT];
    bool any = false;
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      xv[m] = 0.0f;
      if (m < M && r < r1) {
        const float xf = xs[q][m];
        if (keep(score_key(xf, sc[q]), r, gate_key[m], gate_cut[m])) {
          xv[m] = xf;
          any = true;
        }
      }
    }
    const unsigned ballot = __ballot_sync(kFullMask, any);
    if (lane == 0) s_warp_count[warp] = __popc(ballot);
    __syncthreads();
    int offset = 0, total = 0;
#pragma unroll
    for (int w = 0; w < kDecodeThreads / 32; ++w) {
      const int c = s_warp_count[w];
      offset += w < warp ? c : 0;
      total += c;
    }
    if (any) {
      const int pos = count + offset + __popc(ballot & ((1u << lane) - 1u));
      s_rows[pos] = r;
      if constexpr (VEC) {
        // The slab's first prefetch_rows kept rows start streaming into the L2 now: their DRAM
        // latency then overlaps the listing of the rest of the slab (-0.4 to -0.8 us a call with
        // slabs of 448-512 rows, nothing to gain with one gating round; H200, docs/cuda-notes.md).
        const int64_t col0 = static_cast<int64_t>(tile) * TN;
        if (pos < prefetch_rows && col0 < N) {
          const char* row = reinterpret_cast<const char*>(b + static_cast<int64_t>(r) * N + col0);
          const int64_t bytes = (N - col0 < TN ? N - col0 : TN) * static_cast<int64_t>(sizeof(T));
          for (int64_t o = 0; o < bytes; o += 128) prefetch_line_l2(row + o);
        }
      }
#pragma unroll
      for (int m = 0; m < MT; ++m) s_x[m][pos] = xv[m];
    }
    count += total;
    __syncthreads();
  }
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

// ---------------------------------------------------------------------------------
// Top-k for K >= 65536 (beyond the 16-bit counters of topk_select_kernel below): per token
// (one block each), the k-th largest key by a 4-pass radix select (8 bits a pass, from the
// top), then the index of the last tie to keep.

template <typename T, int ITEMS>  // ITEMS > 0: K <= ITEMS * kSelectThreads, keys in registers
__global__ void __launch_bounds__(kSelectThreads)
    topk_select_wide_kernel(const T* __restrict__ x, const float* __restrict__ scale, const int64_t* k_ptr,
                       int K, uint32_t* __restrict__ gate_keys, int32_t* __restrict__ gate_cuts) {
  __shared__ int s_hist[256];
  __shared__ int s_sel[3];
  __shared__ unsigned s_ballot[kSelectThreads / 32];
  __shared__ int s_total;
  __shared__ int s_found;

  const int m = blockIdx.x;
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const T* xr = x + static_cast<int64_t>(m) * K;

  const int64_t k_raw = *k_ptr;
  const int kk = static_cast<int>(k_raw < 0 ? 0 : (k_raw > K ? K : k_raw));
  if (kk == 0 || kk == K) {  // nothing kept / everything kept
    if (tid == 0) {
      gate_keys[m] = kk == 0 ? 0xffffffffu : 0u;
      gate_cuts[m] = -1;
    }
    return;
  }

  constexpr int kRegItems = ITEMS > 0 ? ITEMS : 1;
  const int chunks = ITEMS > 0 ? ITEMS : (K + kSelectThreads - 1) / kSelectThreads;
  uint32_t reg_keys[kRegItems];
  if constexpr (ITEMS > 0) {
#pragma unroll
    for (int j = 0; j < ITEMS; ++j) {
      const int i = j * kSelectThreads + tid;
      reg_keys[j] = i < K ? score_key(Elem<T>::to_float(xr[i]), scale[i]) : 0u;
    }
  }
  auto key_at = [&](int j, int i) -> uint32_t {
    if constexpr (ITEMS > 0) {
      return reg_keys[j];
    } else {
      return score_key(Elem<T>::to_float(xr[i]), scale[i]);
    }
  };

  if (tid == 0) s_found = -1;
  uint32_t prefix = 0, prefix_mask = 0;
  int remaining = kk;  // keys still to take among those matching prefix
  for (int shift = 24; shift >= 0; shift -= 8) {
    if (tid < 256) s_hist[tid] = 0;
    __syncthreads();
#pragma unroll
    for (int j = 0; j < (ITEMS > 0 ? ITEMS : chunks); ++j) {
      const int i = j * kSelectThreads + tid;
      const bool valid = i < K;
      const uint32_t key = valid ? key_at(j, i) : 0u;
      const bool candidate = valid && (key & prefix_mask) == prefix;
      const unsigned digit = (key >> shift) & 0xffu;
      const unsigned active = __ballot_sync(kFullMask, candidate);
      if (candidate) {
        const unsigned peers = __match_any_sync(active, digit);
        if (lane == __ffs(peers) - 1) atomicAdd(&s_hist[digit], __popc(peers));
      }
    }
    __syncthreads();
    if (warp == 0) {
      // Lane l holds bins 255 - 8l ... 255 - 8l - 7: a scan in descending digit order.
      int c[8];
      int local = 0;
#pragma unroll
      for (int t = 0; t < 8; ++t) {
        c[t] = s_hist[255 - (lane * 8 + t)];
        local += c[t];
      }
      int inclusive = local;
#pragma unroll
      for (int offset = 1; offset < 32; offset <<= 1) {
        const int other = __shfl_up_sync(kFullMask, inclusive, offset);
        if (lane >= offset) inclusive += other;
      }
      const int exclusive = inclusive - local;
      if (exclusive < remaining && remaining <= inclusive) {
        int run = exclusive;
#pragma unroll
        for (int t = 0; t < 8; ++t) {
          if (run + c[t] >= remaining) {
            s_sel[0] = 255 - (lane * 8 + t);
            s_sel[1] = run;
            s_sel[2] = c[t];
            break;
          }
          run += c[t];
        }
      }
    }
    __syncthreads();
    const uint32_t digit = static_cast<uint32_t>(s_sel[0]);
    remaining -= s_sel[1];
    const int in_bin = s_sel[2];
    prefix |= digit << shift;
    prefix_mask |= 0xffu << shift;
    if (in_bin == remaining) {
      // The whole bin is kept: keep every key >= prefix (its lower bits are zero).
      if (tid == 0) {
        gate_keys[m] = prefix == 0 ? 0u : prefix - 1;
        gate_cuts[m] = -1;
      }
      return;
    }
  }

  // prefix is the k-th key; keep the first `remaining` indices holding it.
  int running = 0;
  for (int j = 0; j < chunks; ++j) {
    const int i = j * kSelectThreads + tid;
    bool equal = false;
    if constexpr (ITEMS > 0) {
#pragma unroll
      for (int jj = 0; jj < ITEMS; ++jj)
        if (jj == j) equal = i < K && reg_keys[jj] == prefix;
    } else {
      equal = i < K && key_at(j, i) == prefix;
    }
    const unsigned ballot = __ballot_sync(kFullMask, equal);
    if (lane == 0) s_ballot[warp] = ballot;
    __syncthreads();
    if (warp == 0) {
      const unsigned mine = s_ballot[lane];
      const int count = __popc(mine);
      int inclusive = count;
#pragma unroll
      for (int offset = 1; offset < 32; offset <<= 1) {
        const int other = __shfl_up_sync(kFullMask, inclusive, offset);
        if (lane >= offset) inclusive += other;
      }
      const int exclusive = inclusive - count;
      const int need = remaining - running;
      if (exclusive < need && need <= inclusive) {
        unsigned bits = mine;
        for (int t = exclusive + 1; t < need; ++t) bits &= bits - 1;
        s_found = j * kSelectThreads + lane * 32 + (__ffs(bits) - 1);
      }
      if (lane == 31) s_total = inclusive;
    }
    __syncthreads();
    if (s_found >= 0) break;
    running += s_total;
    __syncthreads();  // s_total is rewritten in the next chunk
  }
  if (tid == 0) {
    gate_keys[m] = prefix;
    gate_cuts[m] = s_found;
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
  for (int m = blockIdx.y; m < M; m += gridDim.y) {
    float acc = 0.0f;
    if (n < n_total) {
#pragma unroll 4
      for (int s = threadIdx.y; s < splits; s += kReduceLanes)
        acc += partial[(static_cast<int64_t>(s) * M + m) * n_total + n];
    }
    s_sum[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && n < n_total) {
      float total = 0.0f;
#pragma unroll
      for (int i = 0; i < kReduceLanes; ++i) total += s_sum[i][threadIdx.x];
      if (bias != nullptr) total += Elem<T>::to_float(bias[local]);
      y[static_cast<int64_t>(m) * seg_n + local] = Elem<T>::from_float(total);
    }
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------------
// Prefill: gated X into the workspace, then a tiled GEMM.

template <typename T, Gating GATING>
__global__ void mask_kernel(const T* __restrict__ x, const float* __restrict__ scale, Gate gate,
                            T* __restrict__ xg, int64_t M, int K) {
  const int64_t total = M * K;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int m = static_cast<int>(idx / K);
    const int i = static_cast<int>(idx - static_cast<int64_t>(m) * K);
    uint32_t gate_key;
    int gate_cut;
    token_gate<GATING>(gate, m, gate_key, gate_cut);
    const T v = x[idx];
    xg[idx] = keep(score_key(Elem<T>::to_float(v), scale[i]), i, gate_key, gate_cut) ? v : Elem<T>::from_float(0.0f);
  }
}

// The same masking, 16 bytes a thread: grid (K / (8 * 256) pieces, M tokens), so the token's
// gate is read once per thread and no index is divided. Needs K % 8 == 0 and 16-byte
// aligned X and gated X (2-byte types).
template <typename T, Gating GATING>
__global__ void __launch_bounds__(256)
    mask_kernel_vec(const T* __restrict__ x, const float* __restrict__ scale, Gate gate, T* __restrict__ xg, int K) {
  static_assert(sizeof(T) == 2, "16 bytes = 8 elements");
  const int m = blockIdx.y;
  const int i0 = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
  if (i0 >= K) return;
  uint32_t gate_key;
  int gate_cut;
  token_gate<GATING>(gate, m, gate_key, gate_cut);
  const size_t offset = static_cast<size_t>(m) * static_cast<size_t>(K) + static_cast<size_t>(i0);
  uint4 v = *reinterpret_cast<const uint4*>(x + offset);
  const float4 s0 = *reinterpret_cast<const float4*>(scale + i0);
  const float4 s1 = *reinterpret_cast<const float4*>(scale + i0 + 4);
  const float sc[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
  T* e = reinterpret_cast<T*>(&v);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    if (!keep(score_key(Elem<T>::to_float(e[j]), sc[j]), i0 + j, gate_key, gate_cut)) e[j] = Elem<T>::from_float(0.0f);
  }
  *reinterpret_cast<uint4*>(xg + offset) = v;
}

constexpr int kGemmBM = 64, kGemmBN = 64, kGemmBK = 16;
constexpr int kGemmThreads = 256;  // 16 x 16, each 4 x 4 outputs

template <typename T>
__global__ void __launch_bounds__(kGemmThreads)
    gemm_kernel(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ bias,
                T* __restrict__ y, int M, int K, int64_t N) {
  __shared__ float s_a[kGemmBK][kGemmBM + 4];
  __shared__ float s_b[kGemmBK][kGemmBN + 4];
  const int tid = threadIdx.x;
  const int tx = tid % 16;
  const int ty = tid / 16;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kGemmBM;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * kGemmBN;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < K; k0 += kGemmBK) {
#pragma unroll
    for (int q = 0; q < kGemmBM * kGemmBK / kGemmThreads; ++q) {
      const int e = tid + q * kGemmThreads;
      const int r = e / kGemmBK, kk = e % kGemmBK;
      const int64_t gr = row0 + r;
      const int gk = k0 + kk;
      s_a[kk][r] = (gr < M && gk < K) ? Elem<T>::to_float(a[gr * K + gk]) : 0.0f;
    }
#pragma unroll
    for (int q = 0; q < kGemmBK * kGemmBN / kGemmThreads; ++q) {
      const int e = tid + q * kGemmThreads;
      const int kk = e / kGemmBN, c = e % kGemmBN;
      const int gk = k0 + kk;
      const int64_t gc = col0 + c;
      s_b[kk][c] = (gk < K && gc < N) ? Elem<T>::to_float(b[static_cast<int64_t>(gk) * N + gc]) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kGemmBK; ++kk) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = s_a[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = s_b[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t r = row0 + ty + 16 * i;
    if (r >= M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t c = col0 + tx + 16 * j;
      if (c >= N) continue;
      float v = acc[i][j];
      if (bias != nullptr) v += Elem<T>::to_float(bias[c]);
      y[r * N + c] = Elem<T>::from_float(v);
    }
  }
}

// ---------------------------------------------------------------------------------
// Host side

constexpr size_t kAlign = 256;
size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Workspace: [gate keys, gate cuts] (top-k), then the partial sums (decode) or the
// gated X (prefill).
size_t gate_bytes(const Problem& p) {
  return p.gating == Gating::kTopK ? 2 * align_up(static_cast<size_t>(p.M) * 4) : 0;
}

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

template <typename T>
int64_t column_tiles(int64_t n) {
  return (n + tile_cols<T>() - 1) / tile_cols<T>();
}

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
  c.tiles += static_cast<int>(column_tiles<T>(N));
  c.n_total += N;
  t.tile_begin[s + 1] = c.tiles;
  t.col_begin[s + 1] = c.n_total;
}

template <typename T>
DecodeCall single_call(const Problem& p) {
  DecodeCall c;
  c.x = p.x;
  c.M = p.M;
  c.K = p.K;
  add_weight<T>(c, p.b, p.score_scale, p.threshold, p.bias, p.y, p.N);
  return c;
}

template <typename T>
DecodeCall group_call(const GroupProblem& g) {
  DecodeCall c;
  c.x = g.x;
  c.M = g.M;
  c.K = g.K;
  for (int s = 0; s < g.count; ++s) {
    const Segment& w = g.segments[s];
    add_weight<T>(c, w.b, w.score_scale, w.threshold, w.bias, w.y, w.N);
  }
  return c;
}

// Dynamic shared memory of a decode kernel: S batches of U rows of 16 bytes per thread (VEC).
// Above the default 48 KiB a kernel must opt in, once per device and kernel: `done` is one
// flag word per instantiation of the caller (kernels of one signature share a pointer type).
template <typename Kernel>
cudaError_t allow_decode_smem(Kernel kernel, size_t bytes, std::atomic<uint64_t>& done) {
  if (bytes <= 32 * 1024) return cudaSuccess;  // with the kernel's static 10-16 KiB, under 48 KiB
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const uint64_t bit = device < 64 ? (uint64_t{1} << device) : 0;
  if (bit != 0 && (done.load(std::memory_order_acquire) & bit)) return cudaSuccess;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (err == cudaSuccess && bit != 0) done.fetch_or(bit, std::memory_order_release);
  return err;
}

template <typename T, int MT, bool VEC, Gating GATING, int U, typename W, int S, typename P>
cudaError_t launch_decode_kernel(const DecodeCall& c, const P& weights, const Plan& plan, bool pdl, const Gate& gate,
                                 float* partial, Stream stream) {
  const dim3 grid(static_cast<unsigned>(c.tiles), static_cast<unsigned>(plan.splits));
  const size_t smem = VEC ? static_cast<size_t>(S) * U * kDecodeThreads * 16 : 0;
  auto* kernel = decode_partial_kernel<T, MT, VEC, GATING, U, W, S>;
  static std::atomic<uint64_t> smem_done{0};  // one per instantiation, i.e. per kernel
  const cudaError_t err = allow_decode_smem(kernel, smem, smem_done);
  if (err != cudaSuccess) return err;
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

// Raises the shared-memory limit of the top-k kernel once per device (128 KiB > the default 48).
template <typename T, int ITEMS>
cudaError_t allow_select_smem() {
  static std::atomic<uint64_t> done{0};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const uint64_t bit = device < 64 ? (uint64_t{1} << device) : 0;
  if (bit != 0 && (done.load(std::memory_order_acquire) & bit)) return cudaSuccess;
  err = cudaFuncSetAttribute(topk_select_kernel<T, ITEMS>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             kSelectSmemBytes);
  if (err == cudaSuccess && bit != 0) done.fetch_or(bit, std::memory_order_release);
  return err;
}

template <typename T, int ITEMS>
cudaError_t launch_select_items(const Problem& p, uint32_t* keys, int32_t* cuts, bool pdl, Stream stream) {
  const cudaError_t err = allow_select_smem<T, ITEMS>();
  if (err != cudaSuccess) return err;
  return launch(stream, topk_select_kernel<T, ITEMS>, dim3(static_cast<unsigned>(p.M)), dim3(kSelectThreads),
                kSelectSmemBytes, pdl, static_cast<const T*>(p.x), p.score_scale, p.k, static_cast<int>(p.K), keys,
                cuts);
}

// The per-token top-k rule (key_t, cut_t) into keys and cuts.
template <typename T>
cudaError_t launch_select(const Problem& p, uint32_t* keys, int32_t* cuts, bool pdl, Stream stream) {
  if (p.K >= 65536)
    return launch(stream, topk_select_wide_kernel<T, 0>, dim3(static_cast<unsigned>(p.M)), dim3(kSelectThreads), 0,
                  false, static_cast<const T*>(p.x), p.score_scale, p.k, static_cast<int>(p.K), keys, cuts);
  if (p.K <= 4 * kSelectThreads) return launch_select_items<T, 4>(p, keys, cuts, pdl, stream);
  if (p.K <= 8 * kSelectThreads) return launch_select_items<T, 8>(p, keys, cuts, pdl, stream);
  if (p.K <= 16 * kSelectThreads) return launch_select_items<T, 16>(p, keys, cuts, pdl, stream);
  return launch_select_items<T, 0>(p, keys, cuts, pdl, stream);
}

// The gate of a call: the threshold, or for top-k the per-token rule, selected on the device
// into the front of the workspace. Advances ws past the gate's bytes.
template <typename T>
cudaError_t enqueue_gate(const Problem& p, bool pdl, Stream stream, char*& ws, Gate& gate) {
  gate = Gate{p.threshold, nullptr, nullptr};
  if (p.gating == Gating::kTopK) {
    uint32_t* keys = reinterpret_cast<uint32_t*>(ws);
    int32_t* cuts = reinterpret_cast<int32_t*>(ws + align_up(static_cast<size_t>(p.M) * 4));
    gate.keys = keys;
    gate.cuts = cuts;
    const cudaError_t err = launch_select<T>(p, keys, cuts, pdl, stream);
    if (err != cudaSuccess) return err;
  }
  ws += gate_bytes(p);
  return cudaSuccess;
}

template <typename T, Gating GATING>
cudaError_t launch_prefill(const Problem& p, const Gate& gate, T* xg, Stream stream) {
  const int64_t total = p.M * p.K;
  const unsigned mask_blocks = static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, 65536));
  cudaError_t err = launch(stream, mask_kernel<T, GATING>, dim3(mask_blocks), dim3(256), 0, false,
                           static_cast<const T*>(p.x), p.score_scale, gate, xg, p.M, static_cast<int>(p.K));
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>((p.N + kGemmBN - 1) / kGemmBN), static_cast<unsigned>((p.M + kGemmBM - 1) / kGemmBM));
  return launch(stream, gemm_kernel<T>, grid, dim3(kGemmThreads), 0, false, static_cast<const T*>(xg),
                static_cast<const T*>(p.b), static_cast<const T*>(p.bias), static_cast<T*>(p.y), static_cast<int>(p.M),
                static_cast<int>(p.K), p.N);
}

}  // namespace

namespace {

// The decode plan for M tokens over K rows and `tiles` column tiles (all weights together).
Plan decode_plan(int64_t M, int64_t K, int64_t tiles, bool vectorized, const DeviceInfo& device, int blocks_per_sm) {
  Plan plan;
  plan.decode = M <= kMaxDecodeTokens;
  plan.pdl = device.cc_major >= 9;
  if (!plan.decode || M == 0 || K == 0 || tiles == 0) return plan;
  plan.vectorized = vectorized;
  // Two blocks per multiprocessor: the best or within 3% of it for the Llama-3-8B shapes
  // on an H100 (benchmarks/results/kernel_cuda_launchers.txt).
  const int64_t target = static_cast<int64_t>(blocks_per_sm > 0 ? blocks_per_sm : 2) * std::max(device.sm_count, 1);
  // At most `target` blocks (floor): a grid a little over two blocks per SM ran 7% slower
  // on 4096x14336 once the decode kernel was PDL-launched (round 2, docs/cuda-notes.md).
  const int64_t want_splits = std::max<int64_t>(1, target / tiles);
  int64_t rows = (K + want_splits - 1) / want_splits;
  rows = (rows + 31) / 32 * 32;
  rows = std::min<int64_t>(std::max<int64_t>(rows, 64), kMaxSlabRows);
  // The threshold decode kernel PDL-launched after the previous op: -1.2 to -1.3 us a call in
  // ORT's CUDA graphs for 4096x4096 and 14336x4096, +0.2 to +2.5 us for 4096x14336 (28 tiles);
  // round 2, docs/cuda-notes.md; again +2.5 to +5 us there with the L2 hints (H200, 2026-12-01,
  // kernel_cuda_h200_pdl_all.txt), although the launchers' own graphs gain 0.5 us. Cluster plans
  // (below) are PDL-launched too.
  plan.pdl_first = plan.pdl && tiles <= 16;
  plan.rows_per_split = rows;
  plan.splits = (K + rows - 1) / rows;
  // Up to two tokens: batches of 4 rows a thread, the next batch loading while one is multiplied
  // (same 32 KiB of shared memory as one batch of 8, never empty of loads); 1-7% faster than
  // one batch of 8 at a time on the Llama-3-8B shapes, H200 (kernel_cuda_launchers_pipeline_h200.txt).
  plan.unroll = 4;
  plan.stages = M <= 2 ? 2 : 1;
  // A cluster plan where one cluster of 8 slabs (of at most kMaxSlabRows rows) per column tile
  // gives 1.5 to 2 blocks per SM: each tile's slabs are added in the cluster's shared memory, so
  // no partial sums leave the SMs and no reduction kernel follows (4096x14336: -0.75 us a call,
  // launchers on the H200, kernel_cuda_launchers_cluster_h200.txt). The narrower outputs have too
  // few tiles for it; a version with narrower tiles for them was slower (docs/cuda-notes.md).
  constexpr int kClusterSlabs = 8;
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
  // Slabs listed in more than one gating round: the first kept rows are prefetched into the L2
  // after the first round (Plan::prefetch_rows; 24 was the best of 8-64 on the H200,
  // kernel_cuda_launchers_prefetch_h200.txt).
  if (device.cc_major >= 9 && vectorized && plan.rows_per_split > kDecodeThreads) plan.prefetch_rows = 24;
  // A cluster plan is one kernel a call (no reduction kernel after it): PDL-launched after the
  // previous op it took 4096x14336 from 18.2 to 17.5 us at 50% and 14.1 to 13.3 at 65% in ORT's
  // CUDA graphs (H200, kernel_cuda_h200_pdl_cluster.txt), where split-K plans of that shape lost.
  if (plan.cluster > 0) plan.pdl_first = plan.pdl;
  return plan;
}

// 16-byte loads of a weight's rows: whole vectors per row and an aligned base.
template <typename T>
bool vectorizable(const void* b, int64_t N) {
  return N % vec_elems<T>() == 0 && reinterpret_cast<uintptr_t>(b) % 16 == 0;
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

}  // namespace

template <typename T>
Plan MakePlan(const Problem& p, const DeviceInfo& device, int blocks_per_sm) {
  if (p.N == 0) return decode_plan(p.M, p.K, 0, false, device, blocks_per_sm);
  return decode_plan(p.M, p.K, column_tiles<T>(p.N), vectorizable<T>(p.b, p.N), device, blocks_per_sm);
}

template <typename T>
Plan MakeGroupPlan(const GroupProblem& g, const DeviceInfo& device, int blocks_per_sm) {
  int64_t tiles = 0;
  bool vectorized = true;
  for (int s = 0; s < g.count; ++s) {
    tiles += column_tiles<T>(g.segments[s].N);
    vectorized = vectorized && vectorizable<T>(g.segments[s].b, g.segments[s].N);
  }
  return decode_plan(g.M, g.K, tiles, vectorized, device, blocks_per_sm);
}

template <typename T>
size_t GroupWorkspaceBytes(const GroupProblem& g, const Plan& plan) {
  int64_t n_total = 0;
  for (int s = 0; s < g.count; ++s) n_total += g.segments[s].N;
  if (g.M == 0 || g.K == 0 || n_total == 0) return 0;
  return partial_bytes(plan, g.M, n_total);
}

template <typename T>
cudaError_t LaunchWinaGroupDecode(const GroupProblem& g, const Plan& plan, void* workspace, Stream stream) {
  if (!stream.valid()) return cudaErrorInvalidResourceHandle;
  if (g.count < 1 || g.count > kMaxSegments || g.M < 0 || g.K < 0 || g.K > INT_MAX / 2 || !plan.decode ||
      g.M > kMaxDecodeTokens)
    return cudaErrorInvalidValue;
  for (int s = 0; s < g.count; ++s)
    if (g.segments[s].N < 0 || g.segments[s].threshold == nullptr) return cudaErrorInvalidValue;
  const DecodeCall c = group_call<T>(g);
  if (c.M == 0 || c.n_total == 0) return cudaSuccess;
  if (c.K == 0) return launch_reduce<T>(c, nullptr, 0, false, stream);  // Y_s = bias_s or 0
  if (bad_decode_plan(plan, c.M, c.K) || (workspace == nullptr && plan.cluster == 0)) return cudaErrorInvalidValue;
  float* partial = static_cast<float*>(workspace);
  const Gate gate{nullptr, nullptr, nullptr};  // each block reads its weight's threshold
  const cudaError_t err = launch_decode<T, Gating::kThreshold>(c, plan, gate, partial, stream);
  if (err != cudaSuccess || plan.cluster > 0) return err;  // a cluster plan writes Y itself
  return launch_reduce<T>(c, partial, static_cast<int>(plan.splits), plan.pdl, stream);
}

template <typename T>
size_t WorkspaceBytes(const Problem& p, const Plan& plan) {
  if (p.M == 0 || p.N == 0 || p.K == 0) return 0;
  size_t bytes = gate_bytes(p);
  if (plan.decode) {
    bytes += partial_bytes(plan, p.M, p.N);
  } else {
    bytes += align_up(static_cast<size_t>(p.M) * static_cast<size_t>(p.K) * sizeof(T));
  }
  return bytes;
}

template <typename T>
cudaError_t LaunchWinaSparseMatMul(const Problem& p, const Plan& plan, void* workspace, Stream stream) {
  if (!stream.valid()) return cudaErrorInvalidResourceHandle;
  if (p.M < 0 || p.K < 0 || p.N < 0 || p.K > INT_MAX / 2 || p.M > INT_MAX || p.M > 65535 * kGemmBM)
    return cudaErrorInvalidValue;
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  if (p.K == 0) return launch_reduce<T>(single_call<T>(p), nullptr, 0, false, stream);  // Y = bias or 0
  if (plan.decode && bad_decode_plan(plan, p.M, p.K)) return cudaErrorInvalidValue;
  if (workspace == nullptr && WorkspaceBytes<T>(p, plan) > 0) return cudaErrorInvalidValue;

  char* ws = static_cast<char*>(workspace);
  Gate gate;
  const cudaError_t gate_err = enqueue_gate<T>(p, plan.decode && plan.pdl, stream, ws, gate);
  if (gate_err != cudaSuccess) return gate_err;
  if (plan.decode) {
    float* partial = reinterpret_cast<float*>(ws);
    const DecodeCall c = single_call<T>(p);
    const cudaError_t err = p.gating == Gating::kTopK
                                ? launch_decode<T, Gating::kTopK>(c, plan, gate, partial, stream)
                                : launch_decode<T, Gating::kThreshold>(c, plan, gate, partial, stream);
    if (err != cudaSuccess || plan.cluster > 0) return err;  // a cluster plan writes Y itself
    return launch_reduce<T>(c, partial, static_cast<int>(plan.splits), plan.pdl, stream);
  }
  T* xg = reinterpret_cast<T*>(ws);
  return p.gating == Gating::kTopK ? launch_prefill<T, Gating::kTopK>(p, gate, xg, stream)
                                   : launch_prefill<T, Gating::kThreshold>(p, gate, xg, stream);
}

template <typename T>
cudaError_t LaunchWinaGatedX(const Problem& p, const Plan& plan, void* workspace, Stream stream, const void** xg) {
  if (!stream.valid()) return cudaErrorInvalidResourceHandle;
  if (xg == nullptr || plan.decode || p.M <= 0 || p.K <= 0 || p.N < 0 || p.K > INT_MAX / 2 || p.M > INT_MAX)
    return cudaErrorInvalidValue;
  if (workspace == nullptr) return cudaErrorInvalidValue;
  char* ws = static_cast<char*>(workspace);
  Gate gate;
  const cudaError_t gate_err = enqueue_gate<T>(p, false, stream, ws, gate);
  if (gate_err != cudaSuccess) return gate_err;
  T* out = reinterpret_cast<T*>(ws);
  *xg = out;
  if constexpr (sizeof(T) == 2) {
    const bool aligned = reinterpret_cast<uintptr_t>(p.x) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0 &&
                         reinterpret_cast<uintptr_t>(p.score_scale) % 16 == 0;
    if (p.K % 8 == 0 && aligned && p.M <= 65535) {
      const dim3 grid(static_cast<unsigned>((p.K / 8 + 255) / 256), static_cast<unsigned>(p.M));
      return p.gating == Gating::kTopK
                 ? launch(stream, mask_kernel_vec<T, Gating::kTopK>, grid, dim3(256), 0, false,
                          static_cast<const T*>(p.x), p.score_scale, gate, out, static_cast<int>(p.K))
                 : launch(stream, mask_kernel_vec<T, Gating::kThreshold>, grid, dim3(256), 0, false,
                          static_cast<const T*>(p.x), p.score_scale, gate, out, static_cast<int>(p.K));
    }
  }
  const int64_t total = p.M * p.K;
  const unsigned mask_blocks = static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, 65536));
  const cudaError_t err =
      p.gating == Gating::kTopK
          ? launch(stream, mask_kernel<T, Gating::kTopK>, dim3(mask_blocks), dim3(256), 0, false,
                   static_cast<const T*>(p.x), p.score_scale, gate, out, p.M, static_cast<int>(p.K))
          : launch(stream, mask_kernel<T, Gating::kThreshold>, dim3(mask_blocks), dim3(256), 0, false,
                   static_cast<const T*>(p.x), p.score_scale, gate, out, p.M, static_cast<int>(p.K));
  return err;
}

#define WINA_INSTANTIATE(T)                                                                        \
  template Plan MakePlan<T>(const Problem&, const DeviceInfo&, int);                               \
  template size_t WorkspaceBytes<T>(const Problem&, const Plan&);                                  \
  template cudaError_t LaunchWinaSparseMatMul<T>(const Problem&, const Plan&, void*, Stream);      \
  template cudaError_t LaunchWinaGatedX<T>(const Problem&, const Plan&, void*, Stream, const void**);       \
  template Plan MakeGroupPlan<T>(const GroupProblem&, const DeviceInfo&, int);                     \
  template size_t GroupWorkspaceBytes<T>(const GroupProblem&, const Plan&);                        \
  template cudaError_t LaunchWinaGroupDecode<T>(const GroupProblem&, const Plan&, void*, Stream);

WINA_INSTANTIATE(float)
WINA_INSTANTIATE(__half)
WINA_INSTANTIATE(__nv_bfloat16)
#undef WINA_INSTANTIATE

}  // namespace cuda
}  // namespace wina

// Helpers shared by the CUDA kernels of the library: launching through ORT's stream,
// programmatic dependent launch, thread-block clusters, element types, L2 cache policies
// and asynchronous copies. Device code: included by the .cu units only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "cuda/launchers.cuh"

// The element types of every kernel: X(T) once per type (explicit instantiations).
#define WINA_CUDA_FOR_EACH_TYPE(X) X(float) X(__half) X(__nv_bfloat16)

namespace wina {
namespace cuda {

inline constexpr unsigned kFullMask = 0xffffffffu;

// Inclusive prefix sum of v over the lanes of a warp (all 32 of them active) up to `lane`.
__device__ __forceinline__ int warp_inclusive_scan(int v, int lane) {
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const int other = __shfl_up_sync(kFullMask, v, offset);
    if (lane >= offset) v += other;
  }
  return v;
}

// Block-wide compaction in thread order (a block of THREADS threads): a thread that has an
// item (`any`) calls place(pos) with its position, from `base` on, among the threads that
// have one. Returns the count of items over the block. s_warp_count holds THREADS / 32 ints;
// the caller syncs the block before the next call.
template <int THREADS, typename Place>
__device__ __forceinline__ int block_compact(bool any, int base, int lane, int warp, int* s_warp_count,
                                             Place&& place) {
  const unsigned ballot = __ballot_sync(kFullMask, any);
  if (lane == 0) s_warp_count[warp] = __popc(ballot);
  __syncthreads();
  int offset = 0, total = 0;
#pragma unroll
  for (int w = 0; w < THREADS / 32; ++w) {
    const int c = s_warp_count[w];
    offset += w < warp ? c : 0;
    total += c;
  }
  if (any) place(base + offset + __popc(ballot & ((1u << lane) - 1u)));
  return total;
}

// ---------------------------------------------------------------------------------
// Launching: every kernel goes through launch_clustered(), which takes a Stream and refuses
// the default streams (cmake/cuda.cmake rejects the triple-chevron syntax in src/cuda).

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

// Raises kernel's dynamic shared-memory limit to `bytes` (above the default 48 KiB a kernel
// must opt in), once per device: `done` holds one bit per device and belongs to that kernel.
template <typename Kernel>
cudaError_t allow_dynamic_smem_once(Kernel kernel, size_t bytes, std::atomic<uint64_t>& done) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const uint64_t bit = device < 64 ? (uint64_t{1} << device) : 0;
  if (bit != 0 && (done.load(std::memory_order_acquire) & bit)) return cudaSuccess;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (err == cudaSuccess && bit != 0) done.fetch_or(bit, std::memory_order_release);
  return err;
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

// The 16-bit types, __half and __nv_bfloat16 (a uint4 holds eight, two to a 32-bit word);
// float below.
template <typename T>
struct Elem {
  static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>, "float, __half or __nv_bfloat16");
  static constexpr bool kHalf = std::is_same_v<T, __half>;
  using Pair = std::conditional_t<kHalf, __half2, __nv_bfloat162>;

  static __device__ __forceinline__ float to_float(T v) {
    if constexpr (kHalf) return __half2float(v);
    else return __bfloat162float(v);
  }
  static __device__ __forceinline__ T from_float(float v) {
    if constexpr (kHalf) return __float2half_rn(v);
    else return __float2bfloat16_rn(v);
  }
  static __device__ __forceinline__ float2 pair_to_float2(Pair v) {
    if constexpr (kHalf) return __half22float2(v);
    else return __bfloat1622float2(v);
  }
  static __device__ __forceinline__ void unpack(const uint4& u, float* f) {
    const Pair* h = reinterpret_cast<const Pair*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 t = pair_to_float2(h[i]);
      f[2 * i] = t.x;
      f[2 * i + 1] = t.y;
    }
  }
};

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

// The split-K reduction of partial sums [splits, M, n_total] (float) by a block of
// (columns, LANES) threads, s_sum a row of LD >= columns floats per lane. For column n of the
// partial sums (none where n >= n_total) and every token m of this block (blockIdx.y, then
// every gridDim.y-th): y[m * ldy + col] = T(sum over the splits (+ bias[col])). Thread (x, l)
// adds every LANES-th split, then lane 0 adds the lanes, in a fixed order.
template <typename T, int LANES, int LD>
__device__ __forceinline__ void reduce_splits(const float* __restrict__ partial, int splits, int M, int64_t n_total,
                                              int64_t n, float (&s_sum)[LANES][LD], const T* __restrict__ bias,
                                              T* __restrict__ y, int64_t ldy, int64_t col) {
  for (int m = blockIdx.y; m < M; m += gridDim.y) {
    float acc = 0.0f;
    if (n < n_total) {
#pragma unroll 4
      for (int s = threadIdx.y; s < splits; s += LANES) acc += partial[(static_cast<int64_t>(s) * M + m) * n_total + n];
    }
    s_sum[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && n < n_total) {
      float total = 0.0f;
#pragma unroll
      for (int i = 0; i < LANES; ++i) total += s_sum[i][threadIdx.x];
      if (bias != nullptr) total += Elem<T>::to_float(bias[col]);
      y[static_cast<int64_t>(m) * ldy + col] = Elem<T>::from_float(total);
    }
    __syncthreads();
  }
}

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

}  // namespace cuda
}  // namespace wina

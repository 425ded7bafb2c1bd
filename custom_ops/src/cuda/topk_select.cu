// The top-k select kernels: per token (one block each) the k-th largest score key and the
// last index kept among its ties, written as the token's (key, cut) rule (gating.cuh).
//   K < 65536:  a 2-pass radix select over 16-bit digits, the counters in shared memory;
//   K >= 65536: a 4-pass radix select over 8-bit digits.
#include "cuda/topk_select.cuh"

#include <atomic>
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/gating.cuh"

namespace wina {
namespace cuda {
namespace {

// ---------------------------------------------------------------------------------
// Block-wide helpers (blockDim.x == kSelectThreads)

// Exclusive prefix sum of v over the block in thread order; total over the block.
// s_scan holds 33 ints; the leading barrier makes back-to-back calls safe.
__device__ __forceinline__ int block_exclusive_scan(int v, int* s_scan, int& total) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int inclusive = warp_inclusive_scan(v, lane);
  __syncthreads();
  if (lane == 31) s_scan[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    const int mine = lane < static_cast<int>(blockDim.x >> 5) ? s_scan[lane] : 0;
    const int scan = warp_inclusive_scan(mine, lane);
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
    const int inclusive = warp_inclusive_scan(c0 + c1, lane);
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


// The score keys of this thread's indices j * kSelectThreads + threadIdx.x, j < N, into
// registers (0 past K).
template <typename T, int N>
__device__ __forceinline__ void load_keys(const T* xr, const float* scale, int K, uint32_t (&keys)[N]) {
#pragma unroll
  for (int j = 0; j < N; ++j) {
    const int i = j * kSelectThreads + threadIdx.x;
    keys[j] = i < K ? score_key(Elem<T>::to_float(xr[i]), scale[i]) : 0u;
  }
}

// The tie break, shared by both selects: among the indices whose key is the k-th key `kth`,
// the `remaining`-th in index order is the last one kept (ties keep lower indices). The block
// scans its chunks of kSelectThreads indices in order (key_at(j, i): the key of index i of
// chunk j) and returns that index to every thread. *s_found must be -1 on entry, set before a
// barrier.
template <typename KeyAt>
__device__ __forceinline__ int last_tie_kept(KeyAt&& key_at, int K, int chunks, uint32_t kth, int remaining,
                                             unsigned* s_ballot, int* s_total, int* s_found) {
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
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
      const int inclusive = warp_inclusive_scan(count, lane);
      const int exclusive = inclusive - count;
      const int need = remaining - running;
      if (exclusive < need && need <= inclusive) {
        unsigned bits = mine;
        for (int t = exclusive + 1; t < need; ++t) bits &= bits - 1;
        *s_found = j * kSelectThreads + lane * 32 + (__ffs(bits) - 1);
      }
      if (lane == 31) *s_total = inclusive;
    }
    __syncthreads();
    if (*s_found >= 0) break;
    running += *s_total;
    __syncthreads();  // s_total is rewritten in the next chunk
  }
  return *s_found;
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
  const T* xr = x + static_cast<int64_t>(m) * K;
  const int64_t k_raw = *k_ptr;
  const int kk = static_cast<int>(k_raw < 0 ? 0 : (k_raw > K ? K : k_raw));

  constexpr int kRegItems = ITEMS > 0 ? ITEMS : 1;
  const int chunks = (K + kSelectThreads - 1) / kSelectThreads;
  uint32_t reg_keys[kRegItems];
  if constexpr (ITEMS > 0) load_keys(xr, scale, K, reg_keys);
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
        cut = last_tie_kept(key_at, K, chunks, kth, remaining, s_ballot, &s_total, &s_found);
      }
    }
  }
  if (tid == 0) {
    gate_keys[m] = key_t;
    gate_cuts[m] = cut;
  }
}

// ---------------------------------------------------------------------------------
// Top-k for K >= 65536 (beyond the 16-bit counters of topk_select_kernel above): per token
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
  if constexpr (ITEMS > 0) load_keys(xr, scale, K, reg_keys);
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
      const int inclusive = warp_inclusive_scan(local, lane);
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
  const int cut = last_tie_kept(key_at, K, chunks, prefix, remaining, s_ballot, &s_total, &s_found);
  if (tid == 0) {
    gate_keys[m] = prefix;
    gate_cuts[m] = cut;
  }
}

template <typename T, int ITEMS>
cudaError_t launch_select_items(const Problem& p, uint32_t* keys, int32_t* cuts, bool pdl, Stream stream) {
  // 128 KiB of counters, above the default limit of 48: raised once per device.
  static std::atomic<uint64_t> smem_done{0};
  const cudaError_t err = allow_dynamic_smem_once(topk_select_kernel<T, ITEMS>, kSelectSmemBytes, smem_done);
  if (err != cudaSuccess) return err;
  return launch(stream, topk_select_kernel<T, ITEMS>, dim3(static_cast<unsigned>(p.M)), dim3(kSelectThreads),
                kSelectSmemBytes, pdl, static_cast<const T*>(p.x), p.score_scale, p.k, static_cast<int>(p.K), keys,
                cuts);
}

}  // namespace

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

#define WINA_INSTANTIATE(T) \
  template cudaError_t launch_select<T>(const Problem&, uint32_t*, int32_t*, bool, Stream);
WINA_CUDA_FOR_EACH_TYPE(WINA_INSTANTIATE)
#undef WINA_INSTANTIATE

}  // namespace cuda
}  // namespace wina

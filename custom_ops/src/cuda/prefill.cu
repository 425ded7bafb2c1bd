// Kernels of the prefill path (prefill.cuh): masking (element-wise, or 16 bytes a thread for
// 2-byte types) and the SIMT GEMM.
#include "cuda/prefill.cuh"

#include <algorithm>
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/gating.cuh"

namespace wina {
namespace cuda {
namespace {

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

constexpr int kGemmBK = 16;
constexpr int kGemmThreads = 256;  // 16 x 16, each 4 x 4 outputs

// Stages the ROWS x COLS tile at (row0, col0) of the row-major rows x cols matrix src into
// shared memory as float, 0 past the matrix's edges: s[c][r] (TRANSPOSE) or s[r][c].
template <int ROWS, int COLS, bool TRANSPOSE, typename T, typename R, typename C, int LD>
__device__ __forceinline__ void stage_tile(float (*s)[LD], const T* __restrict__ src, R row0, C col0, R rows, C cols,
                                           int tid) {
#pragma unroll
  for (int q = 0; q < ROWS * COLS / kGemmThreads; ++q) {
    const int e = tid + q * kGemmThreads;
    const int r = e / COLS, c = e % COLS;
    const R gr = row0 + r;
    const C gc = col0 + c;
    const float v = (gr < rows && gc < cols) ? Elem<T>::to_float(src[static_cast<int64_t>(gr) * cols + gc]) : 0.0f;
    if constexpr (TRANSPOSE) {
      s[c][r] = v;
    } else {
      s[r][c] = v;
    }
  }
}

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
    stage_tile<kGemmBM, kGemmBK, true>(s_a, a, row0, k0, static_cast<int64_t>(M), K, tid);
    stage_tile<kGemmBK, kGemmBN, false>(s_b, b, k0, col0, K, N, tid);
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

template <typename T, Gating GATING>
cudaError_t launch_mask(const Problem& p, const Gate& gate, T* xg, Stream stream) {
  const int64_t total = p.M * p.K;
  const unsigned mask_blocks = static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, 65536));
  return launch(stream, mask_kernel<T, GATING>, dim3(mask_blocks), dim3(256), 0, false, static_cast<const T*>(p.x),
                p.score_scale, gate, xg, p.M, static_cast<int>(p.K));
}

}  // namespace

template <typename T, Gating GATING>
cudaError_t launch_gated_x(const Problem& p, const Gate& gate, T* xg, Stream stream) {
  if constexpr (sizeof(T) == 2) {
    const bool aligned = reinterpret_cast<uintptr_t>(p.x) % 16 == 0 && reinterpret_cast<uintptr_t>(xg) % 16 == 0 &&
                         reinterpret_cast<uintptr_t>(p.score_scale) % 16 == 0;
    if (p.K % 8 == 0 && aligned && p.M <= 65535) {
      const dim3 grid(static_cast<unsigned>((p.K / 8 + 255) / 256), static_cast<unsigned>(p.M));
      return launch(stream, mask_kernel_vec<T, GATING>, grid, dim3(256), 0, false, static_cast<const T*>(p.x),
                    p.score_scale, gate, xg, static_cast<int>(p.K));
    }
  }
  return launch_mask<T, GATING>(p, gate, xg, stream);
}

template <typename T, Gating GATING>
cudaError_t launch_prefill(const Problem& p, const Gate& gate, T* xg, Stream stream) {
  const cudaError_t err = launch_mask<T, GATING>(p, gate, xg, stream);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>((p.N + kGemmBN - 1) / kGemmBN), static_cast<unsigned>((p.M + kGemmBM - 1) / kGemmBM));
  return launch(stream, gemm_kernel<T>, grid, dim3(kGemmThreads), 0, false, static_cast<const T*>(xg),
                static_cast<const T*>(p.b), static_cast<const T*>(p.bias), static_cast<T*>(p.y), static_cast<int>(p.M),
                static_cast<int>(p.K), p.N);
}

#define WINA_INSTANTIATE_GATING(T, G)                                                    \
  template cudaError_t launch_gated_x<T, G>(const Problem&, const Gate&, T*, Stream);    \
  template cudaError_t launch_prefill<T, G>(const Problem&, const Gate&, T*, Stream);
#define WINA_INSTANTIATE(T) WINA_CUDA_FOR_EACH_GATING(WINA_INSTANTIATE_GATING, T)
WINA_CUDA_FOR_EACH_TYPE(WINA_INSTANTIATE)
#undef WINA_INSTANTIATE
#undef WINA_INSTANTIATE_GATING

}  // namespace cuda
}  // namespace wina

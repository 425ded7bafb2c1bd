// The prefill path of the CUDA kernels (more than kMaxDecodeTokens tokens): a masking kernel
// writes the gated X into the workspace, then either the ORT kernel multiplies it by B with
// cuBLAS, or a tiled fp32-accumulating SIMT GEMM does (where cuBLAS cannot be opened, and for
// fp32). Kernels in prefill.cu.
#pragma once

#include <cstdint>

#include "cuda/gating.cuh"
#include "cuda/launchers.cuh"

namespace wina {
namespace cuda {

// Output tile of the SIMT GEMM (rows x columns).
inline constexpr int kGemmBM = 64, kGemmBN = 64;

// Enqueues the gated X [M, K] (X where kept, else 0) into xg under rule G.
template <typename T, Gating G>
cudaError_t launch_gated_x(const Problem& p, const Gate& gate, T* xg, Stream stream);

// Enqueues the whole prefill without cuBLAS: the gated X into xg, then Y = xg B (+ bias).
template <typename T, Gating G>
cudaError_t launch_prefill(const Problem& p, const Gate& gate, T* xg, Stream stream);

}  // namespace cuda
}  // namespace wina

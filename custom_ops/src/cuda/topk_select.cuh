// Launcher of the top-k select kernels (topk_select.cu).
#pragma once

#include <cstdint>

#include "cuda/launchers.cuh"

namespace wina {
namespace cuda {

// Threads of a select block (one block a token).
inline constexpr int kSelectThreads = 1024;

// Enqueues, for every token of p (top-k gating), the rule (keys[m], cuts[m]) that keeps its
// p.k largest scores, ties to the lower index. pdl: launched programmatically dependent on
// the kernel before it on the stream (the narrow select only).
template <typename T>
cudaError_t launch_select(const Problem& p, uint32_t* keys, int32_t* cuts, bool pdl, Stream stream);

}  // namespace cuda
}  // namespace wina

// Launchers of the CUDA kernels of WinaSparseMatMul and WinaSparseMatMulGroup: the interface
// between the ORT kernels (wina_sparse_matmul_cuda.cc) and the kernels. Host code may include
// it (no device code here).
//
// Every launcher returns the cudaError_t of its launches; the caller checks it and turns it
// into an ONNX Runtime error. Every launch goes to the Stream it is given, and a Stream is
// never the default stream (see Stream below; CMake also refuses the triple-chevron launch
// syntax in src/cuda, so no launch can bypass it). No atomics on the data: results are
// deterministic.
//
// Semantics: docs/op-schema.md; the NumPy oracle wina_onnx/reference.py. The units:
//   plan.h / plan.cc    what a call is (Problem) and how it is split (Plan), host-only
//   gating.cuh          the gating rules on the device: one per-token (key, cut) test
//   topk_select.cu      top-k: the per-token k-th score and last tie kept, on the device
//   decode.cu           M <= kMaxDecodeTokens: fused gating and split-K product over the kept
//                       rows, then a fixed-order reduction (or a cluster's shared memory)
//   prefill.cu          more tokens: the gated X, then cuBLAS (by the ORT kernel) or a SIMT GEMM
//   launchers.cu        the entry points below
//   common.cuh          launching through the Stream, PDL, clusters, element types, L2 hints
// On sm_90 every kernel of the decode path is launched programmatically dependent on the one
// before it on the stream (this call's or the previous op's), so launches overlap the tail of
// the kernel before.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "cuda/plan.h"
#include "gating.h"

namespace wina {
namespace cuda {

// A stream that is not the default stream: launchers refuse (cudaErrorInvalidResourceHandle)
// the legacy and per-thread default streams, so work never lands outside ORT's stream.
class Stream {
 public:
  explicit Stream(cudaStream_t stream) : stream_(stream) {}
  bool valid() const {
    return stream_ != nullptr && stream_ != cudaStreamLegacy && stream_ != cudaStreamPerThread;
  }
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_;
};

// The plan for a problem on a device (plan.h). blocks_per_sm: decode blocks to aim for per
// multiprocessor (0: the built-in default, 2).
template <typename T>
Plan MakePlan(const Problem& p, const DeviceInfo& device, int blocks_per_sm = 0) {
  return make_plan(p, sizeof(T), device, blocks_per_sm);
}

// Bytes of device scratch the plan needs (0 allowed: then workspace may be nullptr).
template <typename T>
size_t WorkspaceBytes(const Problem& p, const Plan& plan) {
  return workspace_bytes(p, plan, sizeof(T));
}

// Plan and workspace of the grouped decode path (M <= kMaxDecodeTokens).
template <typename T>
Plan MakeGroupPlan(const GroupProblem& g, const DeviceInfo& device, int blocks_per_sm = 0) {
  return make_group_plan(g, sizeof(T), device, blocks_per_sm);
}
template <typename T>
size_t GroupWorkspaceBytes(const GroupProblem& g, const Plan& plan) {
  return group_workspace_bytes(g, plan);
}

// Enqueues every output of a grouped decode call (M <= kMaxDecodeTokens) on `stream`.
template <typename T>
cudaError_t LaunchWinaGroupDecode(const GroupProblem& g, const Plan& plan, void* workspace, Stream stream);

// Enqueues the whole computation of Y on `stream`. The workspace must hold
// WorkspaceBytes(p, plan) bytes and stay untouched until the work is done (stream order).
template <typename T>
cudaError_t LaunchWinaSparseMatMul(const Problem& p, const Plan& plan, void* workspace, Stream stream);

// Prefill through an external GEMM (cuBLAS, called by the ORT kernel): enqueues only the
// gating of the prefill path (the top-k select when needed) and the masking of X into the
// workspace, and sets *xg to the gated X [M, K] there; the caller then multiplies it by B
// (and adds the bias). plan must be a prefill plan (plan.decode false); the workspace holds
// WorkspaceBytes(p, plan) bytes.
template <typename T>
cudaError_t LaunchWinaGatedX(const Problem& p, const Plan& plan, void* workspace, Stream stream, const void** xg);

}  // namespace cuda
}  // namespace wina

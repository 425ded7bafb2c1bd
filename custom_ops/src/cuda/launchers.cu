// The entry points of the CUDA kernels (launchers.cuh): argument checks, the gate of the call
// (the top-k select into the workspace when needed), then the decode or prefill kernels.
#include "cuda/launchers.cuh"

#include <climits>
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/decode.cuh"
#include "cuda/gating.cuh"
#include "cuda/prefill.cuh"
#include "cuda/topk_select.cuh"

namespace wina {
namespace cuda {
namespace {

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

}  // namespace

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
    const cudaError_t err = with_gating(p.gating, [&](auto rule) {
      return launch_decode<T, decltype(rule)::value>(c, plan, gate, partial, stream);
    });
    if (err != cudaSuccess || plan.cluster > 0) return err;  // a cluster plan writes Y itself
    return launch_reduce<T>(c, partial, static_cast<int>(plan.splits), plan.pdl, stream);
  }
  T* xg = reinterpret_cast<T*>(ws);
  return with_gating(p.gating, [&](auto rule) { return launch_prefill<T, decltype(rule)::value>(p, gate, xg, stream); });
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
  return with_gating(p.gating, [&](auto rule) { return launch_gated_x<T, decltype(rule)::value>(p, gate, out, stream); });
}

#define WINA_INSTANTIATE(T)                                                                          \
  template cudaError_t LaunchWinaSparseMatMul<T>(const Problem&, const Plan&, void*, Stream);        \
  template cudaError_t LaunchWinaGatedX<T>(const Problem&, const Plan&, void*, Stream, const void**); \
  template cudaError_t LaunchWinaGroupDecode<T>(const GroupProblem&, const Plan&, void*, Stream);
WINA_CUDA_FOR_EACH_TYPE(WINA_INSTANTIATE)
#undef WINA_INSTANTIATE

}  // namespace cuda
}  // namespace wina

// Launchers of the CUDA kernels of WinaSparseMatMul (kernels in wina_sparse_matmul_impl.cu).
//
// Every launcher returns the cudaError_t of its launches; the caller checks it and
// turns it into an ONNX Runtime error. Every launch goes to the Stream it is given,
// and a Stream is never the default stream (see Stream below; CMake also refuses
// the triple-chevron launch syntax in src/cuda, so no launch can bypass it).
//
// Semantics: docs/op-schema.md; the NumPy oracle wina_onnx/reference.py.
//   decode  (M <= kMaxDecodeTokens): one fused kernel scores and gates the rows of a
//           K slab for every token, lists in shared memory the rows kept by any token, and
//           multiplies only those rows (16-byte cp.async copies in batches of 4 rows a
//           thread, the next batch in flight while one is multiplied; fp32 accumulation) into per-slab
//           partial sums; a second small kernel adds the slabs in a fixed order, adds the
//           bias and rounds to T. On sm_90 every kernel of this path is launched
//           programmatically dependent on the one before it on the stream (this call's or
//           the previous op's), so launches overlap the tail of the kernel before. No atomics on the data: the result is deterministic.
//   prefill (more tokens): a masking kernel writes the gated X into the workspace,
//           then the ORT kernel multiplies it by B with cuBLAS (LaunchWinaGatedX); where
//           cuBLAS cannot be opened, a tiled fp32-accumulating SIMT GEMM does it.
//   topk:   first a per-token radix select over the score bits (two 16-bit passes for
//           K < 65536, one block a token) finds the k-th score and the last index kept
//           among ties (ties keep lower indices), all on the device; every later kernel
//           applies the same per-token rule
//             keep(i) = key(score_i) > key_t  ||  (key(score_i) == key_t && i <= cut_t)
//           where key() maps a float score (NaN -> +inf, -0 -> +0) to an unsigned
//           integer of the same order. Threshold gating is that rule with
//           key_t = key(threshold), cut_t = -1, computed inside the kernels.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

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

// Most tokens the fused decode kernel takes; more go through the prefill path.
inline constexpr int64_t kMaxDecodeTokens = 8;

// One call, in the flattened view X [M, K] x B [K, N]; every pointer is device memory.
struct Problem {
  const void* x = nullptr;             // [M, K], T
  const void* b = nullptr;             // [K, N], T, row-major
  const float* score_scale = nullptr;  // [K]
  const float* threshold = nullptr;    // scalar, GatingParam::kThreshold rules
  const int64_t* k = nullptr;          // scalar, GatingParam::kK rules
  const void* bias = nullptr;          // [N], T, or nullptr
  void* y = nullptr;                   // [M, N], T
  int64_t M = 0, K = 0, N = 0;
  Gating gating = Gating::kThreshold;
};

// How a call is split into blocks; MakePlan chooses one, a benchmark may override it.
struct Plan {
  bool decode = true;        // fused decode path (M <= kMaxDecodeTokens), else prefill
  int64_t rows_per_split = 0;  // decode: rows of B per K slab (a multiple of 32, <= kMaxSlabRows)
  int64_t splits = 0;        // decode: number of K slabs = ceil(K / rows_per_split)
  bool vectorized = false;   // decode: 16-byte loads (N * sizeof(T) % 16 == 0, aligned B)
  int unroll = 4;            // decode: weight rows a thread loads per batch (4, 8; 16 for one token)
  int stages = 1;            // decode, 16-byte loads, <= 2 tokens: batches in flight (2, the default
                             // there: load the next batch while multiplying this one)
  bool pdl = false;          // programmatic dependent launch (sm_90+) of the kernels of the
                             // decode path: each waits (griddepcontrol.wait) for the kernel
                             // before it on the stream, whose tail hides its launch
  bool pdl_first = false;    // threshold: the decode kernel too, after the previous op's
                             // kernel (faster in ORT for N <= 8192 fp16 and for cluster plans,
                             // slower for split-K plans of N = 14336)
  bool l2_hints = true;      // decode: weight rows evict_first, score scales evict_last in the L2
  int prefetch_rows = 0;     // decode, 16-byte loads: each block prefetches the first
                             // prefetch_rows kept rows of its slab into the L2 as it lists them
  int cluster = 0;           // decode, sm_90, <= 2 tokens, 16-byte loads: 0, or the splits (2, 4
                             // or 8) of a column tile as one thread-block cluster that adds its
                             // slabs in shared memory and writes Y (no partial sums in the
                             // workspace, no reduction kernel)
};
inline constexpr int64_t kMaxSlabRows = 512;

struct DeviceInfo {
  int sm_count = 0;
  int cc_major = 0;
};

// The plan for a problem on a device. blocks_per_sm: decode blocks to aim for per
// multiprocessor (0: the built-in default, 2).
template <typename T>
Plan MakePlan(const Problem& p, const DeviceInfo& device, int blocks_per_sm = 0);

// Bytes of device scratch the plan needs (0 allowed: then workspace may be nullptr).
template <typename T>
size_t WorkspaceBytes(const Problem& p, const Plan& plan);

// The grouped form (WinaSparseMatMulGroup): several weights that read the same X, threshold
// gating, each with its own score scale, threshold, bias and output. One decode kernel covers
// the column tiles of every weight (each block gates its slab with its weight's scale and
// threshold) and one reduction kernel writes every output: one launch pair instead of one per
// weight, and a grid that fills the GPU where a single small weight (k/v) would not.
inline constexpr int kMaxSegments = 8;

struct Segment {
  const void* b = nullptr;             // [K, N], T, row-major
  const float* score_scale = nullptr;  // [K]
  const float* threshold = nullptr;    // scalar
  const void* bias = nullptr;          // [N], T, or nullptr
  void* y = nullptr;                   // [M, N], T
  int64_t N = 0;
};

struct GroupProblem {
  const void* x = nullptr;  // [M, K], T
  int64_t M = 0, K = 0;
  int count = 0;            // weights, 1 .. kMaxSegments
  Segment segments[kMaxSegments];
};

// Weight s of a group as a single threshold-gated problem (the prefill path runs them one by one).
inline Problem SegmentProblem(const GroupProblem& g, int s) {
  Problem p;
  p.x = g.x;
  p.b = g.segments[s].b;
  p.score_scale = g.segments[s].score_scale;
  p.threshold = g.segments[s].threshold;
  p.bias = g.segments[s].bias;
  p.y = g.segments[s].y;
  p.M = g.M;
  p.K = g.K;
  p.N = g.segments[s].N;
  p.gating = Gating::kThreshold;
  return p;
}

// Plan and workspace of the grouped decode path (M <= kMaxDecodeTokens).
template <typename T>
Plan MakeGroupPlan(const GroupProblem& g, const DeviceInfo& device, int blocks_per_sm = 0);
template <typename T>
size_t GroupWorkspaceBytes(const GroupProblem& g, const Plan& plan);
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

// Launchers of the CUDA kernels of WinaSparseMatMulNBits (kernels in nbits_decode.cu).
//
// Every launcher returns the cudaError_t of its launches and enqueues its work on the Stream it
// is given (never the default stream). Semantics: docs/op-schema.md; the NumPy oracle
// wina_onnx.reference.wina_sparse_matmul_nbits.
//
//   decode, one token, sm_90, ceil(N / 2) a multiple of 16 (the ring kernel, NbitsPlan::ring_*):
//           blocks of (column tile of 64-256 bytes, K slab), 256 threads, about two blocks a
//           multiprocessor. Before it waits for the kernel before it on the stream (programmatic
//           dependent launch), a block copies its slab's block scales and zero points into shared
//           memory and its score scales into registers: they are weights, not outputs of earlier
//           kernels. It gates its slab (8 consecutive rows a thread, one block-wide scan) and lists
//           the kept rows in order; row group g of the 256 / (tile / 8) groups takes the g-th
//           contiguous share of them, and each thread streams 8 bytes (16 codes) of each of its
//           rows with plain loads, the next 8 rows always in flight in registers (96 registers,
//           two blocks a multiprocessor). The slabs are added by partial sums and a small
//           reduction kernel in slab order (or, as an option, by one thread-block cluster).
//   decode, otherwise (up to kNbitsMaxDecodeTokens): the same steps with 16 bytes (32 codes) a
//           thread and row staged through shared memory by cp.async, two batches of 4 rows in
//           flight, for every token at once; split-K or cluster sums as above.
//   Both accumulate x_i * (1 + c / 16) in float over a thread's rows of one quantization block
//           (the code shifted into a float's top mantissa bits and or-ed with 1.0f: no
//           integer-to-float conversion), and at the block's end add s * (16 * (acc - Σx) - z *
//           Σx) = Σ x (c - z) s to their sums: scale and zero point once per block of G rows.
//           Deterministic: no atomics on data.
//   prefill (more tokens): the weight is dequantized into a T [K, N] scratch
//           (LaunchNbitsDequantize), and the float op's path multiplies the gated X by it.
//   top-k:  the caller runs the float op's top-k select first; the decode kernel applies its
//           per-token rule (NbitsGate::keys/cuts) exactly as the float kernels do.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda/launchers.cuh"

namespace wina {
namespace cuda {

// Most tokens the fused 4-bit decode kernel takes (its float sums live in registers: 64 a token
// and thread); more go through the dequantize-then-GEMM path.
inline constexpr int64_t kNbitsMaxDecodeTokens = 2;

// Rows of a K slab at most (4 gating rounds of 256 threads).
inline constexpr int64_t kNbitsMaxSlabRows = 1024;

enum class ZeroPointKind : int { kNone = 0, kPacked = 1, kTyped = 2 };

// One call in the flattened view X [M, K] x W [K, N]; every pointer is device memory.
struct NbitsProblem {
  const void* x = nullptr;             // [M, K], T
  const uint8_t* b = nullptr;          // [K, ceil(N / 2)] feature-major codes, low nibble = even column
  const void* scales = nullptr;        // [ceil(K / G), N], T
  const void* zero_points = nullptr;   // kPacked: uint8 [ceil(K / G), ceil(N / 2)]; kTyped: T [ceil(K / G), N]
  ZeroPointKind zero_kind = ZeroPointKind::kNone;  // kNone: every zero point is 8
  const float* score_scale = nullptr;  // [K]
  const float* threshold = nullptr;    // scalar, Gating::kThreshold
  const int64_t* k = nullptr;          // scalar, Gating::kTopK
  const void* bias = nullptr;          // [N], T, or nullptr
  void* y = nullptr;                   // [M, N], T
  int64_t M = 0, K = 0, N = 0;
  int64_t block_size = 32;             // G: a power of two, 16 or more
  Gating gating = Gating::kThreshold;
};

// The gate of a decode call, all in device memory: the threshold (kThreshold), or the per-token
// rule keep(i) = key(score_i) > keys[m] || (key(score_i) == keys[m] && i <= cuts[m]) (kTopK), as
// the float op's top-k select kernel writes it.
struct NbitsGate {
  const float* threshold = nullptr;
  const uint32_t* keys = nullptr;
  const int32_t* cuts = nullptr;
};

struct NbitsPlan {
  bool decode = true;          // fused decode kernel (M <= kNbitsMaxDecodeTokens), else dequantize + GEMM
  int col_threads = 8;         // threads across a column tile: 8, 16, 32 or 64 (128 bytes to 1 KiB of a row)
  int64_t rows_per_split = 0;  // rows of a K slab (a multiple of 32, <= kNbitsMaxSlabRows)
  int64_t splits = 0;          // K slabs = ceil(K / rows_per_split)
  int cluster = 0;             // sm_90, col_threads <= 32: 0, or splits (2 to 16) as one cluster per column tile that
                               // adds its slabs in distributed shared memory and writes Y
  bool pdl = false;            // programmatic dependent launch (sm_90): kernels overlap the one before
  bool pdl_first = false;      // the decode kernel too, after the previous op's last kernel
  bool l2_hints = true;        // codes and block scales evict_first in the L2, score scales evict_last
  int stages = 3;              // batches of 4 rows a thread in flight (2 to 4; 2 for two tokens)
  int prefetch_rows = 0;       // each block prefetches its slab's first kept rows into the L2 as it lists them
  int probe = 0;               // timing only (results wrong): 1 skips the product's arithmetic, 2 the product
  bool max_carveout = false;   // the decode and reduction kernels ask for the largest shared-memory carveout
  // The ring kernel (sm_90, one token, ceil(N / 2) a multiple of 16): used when ring_tile > 0,
  // and then the fields above but pdl, pdl_first and probe are unused.
  int ring_tile = 0;           // bytes of a row a block: 64, 128 or 256
  int64_t ring_rows = 0;       // rows of a K slab (a multiple of 32, <= 2048)
  int ring_splits = 0;         // K slabs = ceil(K / ring_rows)
  bool ring_cluster = false;   // the slabs of a tile are one cluster (<= 8), else partial sums + reduction kernel
  int ring_slots = 0;          // rows a thread keeps in flight: 8 or 16
};

// The plan for a problem on a device. blocks_per_sm > 0 and col_threads > 0 override the built-in
// choices (a benchmark's sweep); allow_cluster lets slabs of 2 to 8 per column tile form one
// cluster (sm_90; off by default: no faster than split-K on the H200 but for 4096x14336 with
// 128-byte tiles, slower than the 512-byte split-K plan there).
// allow_ring: the ring kernel where it applies (then blocks_per_sm, 2 by default, sizes its grid
// and col_threads 8, 16 or 32 fixes its tile to 8 x col_threads bytes).
template <typename T>
NbitsPlan MakeNbitsPlan(const NbitsProblem& p, const DeviceInfo& device, int blocks_per_sm = 0, int col_threads = 0,
                        bool allow_cluster = false, bool allow_ring = true);

// Bytes of device scratch the decode plan needs (0 allowed: then workspace may be nullptr).
template <typename T>
size_t NbitsDecodeWorkspaceBytes(const NbitsProblem& p, const NbitsPlan& plan);

// Enqueues the decode path of Y (plan.decode); the workspace holds NbitsDecodeWorkspaceBytes bytes.
template <typename T>
cudaError_t LaunchNbitsDecode(const NbitsProblem& p, const NbitsPlan& plan, const NbitsGate& gate, void* workspace,
                              Stream stream);

// The dequantization kernels: kAuto takes 8 columns x 16 rows a thread (the fastest on the H200)
// where N % 8 == 0 and the buffers are aligned, else the bytewise kernel; the others force one
// (checks, timing), falling back to bytewise where the shape does not allow it.
enum class DequantKernel { kAuto, kBytewise, kCols16Rows8, kCols8Rows8, kCols8Rows16, kCols16Rows16 };

// Enqueues W [K, N] (T, row-major) = (code - zero point) * scale, computed in float32 and rounded
// to T once: the weight the prefill path multiplies by. A vectorized kernel (N a multiple of its
// columns a thread, aligned buffers) writes 8 or 16 columns of 8 or 16 rows a thread in 16-byte
// stores; the bytewise one two columns of one row. All give the same bits.
template <typename T>
cudaError_t LaunchNbitsDequantize(const NbitsProblem& p, void* w, Stream stream,
                                  DequantKernel kernel = DequantKernel::kAuto);

}  // namespace cuda
}  // namespace wina

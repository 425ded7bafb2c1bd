// CUDA kernels of WinaSparseMatMulNBits and their launchers (declared in nbits_decode.cuh, which
// describes the algorithm). One explicit instantiation per element type at the end.
//
// Kernels are launched only through launch_clustered() (cuda/common.cuh), which takes a Stream and
// refuses the default streams; cmake/cuda.cmake rejects the triple-chevron syntax in this folder.
#include "cuda/nbits_decode.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "cuda/common.cuh"
#include "cuda/gating.cuh"

namespace wina {
namespace cuda {
namespace {

// ---------------------------------------------------------------------------------
// Device helpers of this op only (the shared ones: cuda/common.cuh, cuda/gating.cuh)

// The same as copy16_async without a cache hint. ptxas 13.0 assembled the hinted form inside
// stage_bytes() below into an instruction the H200 rejected ("illegal instruction"); the zero
// points are few bytes.
__device__ __forceinline__ void copy16_async_plain(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem) : "memory");
}

// (a & mask) | bits in one instruction (the compiler splits it in two when both are constants).
__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t mask, uint32_t bits) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(mask), "r"(bits));
  return d;
}

// ---------------------------------------------------------------------------------
// Decode

constexpr int kThreads = 256;
constexpr int kMaxSlab = static_cast<int>(kNbitsMaxSlabRows);
constexpr int kGateRows = kMaxSlab / kThreads;  // slab rows a thread gates
constexpr int kBatchRows = 4;                   // rows a thread loads per batch
constexpr int kMaxStages = 4;                   // batches in flight at most (NbitsPlan::stages)
constexpr int kMaxCluster = 16;
constexpr int kCodeBytes = 16;                  // codes a thread and row: 16 bytes = 32 columns
constexpr int kColsPerThread = 2 * kCodeBytes;
// Dynamic shared memory: the code batches [stages][kBatchRows][kThreads] x 16 bytes, reused after
// the product for the row groups' sums [row group][33 x col_threads] floats (padded against bank
// conflicts), then the slab's block scales and zero points.
constexpr int work_bytes(int stages) { return std::max(stages * kBatchRows * kThreads * 16, 33 * kThreads * 4); }
constexpr int kWorkBytes = work_bytes(kMaxStages);
constexpr int kMaxStageBytes = 64 * 1024;  // block scales + zero points of one slab
constexpr int kMaxDynamicSmem = kWorkBytes + kMaxStageBytes + 64;
static_assert(kMaxSlab % kThreads == 0, "whole gating rounds");

// The arguments of both decode kernels (DecodeArgs, RingArgs add their own).
struct WeightArgs {
  const uint8_t* b;
  const void* scales;
  const void* zero_points;
  const float* score_scale;
  const void* bias;
  void* y;
  float* partial;  // split-K partial sums (each kernel says its layout)
  int64_t N;
  int64_t row_bytes;  // ceil(N / 2)
  int K;
  int log_g;
  int rows_per_split;
  int zero_kind;
  int cluster;
  int probe;       // timing only (each kernel says what it skips)
  int vec_scales;  // rows of scales (and typed zero points) in whole, aligned 16-byte vectors
  int vec_zero;    // rows of packed zero points likewise
  int scale_offset, zero_offset;  // bytes into the dynamic shared memory
};

// partial: [splits, M, N] (split-K); probe 1 skips the arithmetic of the product, 2 the product.
struct DecodeArgs : WeightArgs {
  int M;
  int l2_hints;
  int prefetch_rows;  // the slab's first kept rows prefetched into the L2 while gating
  int vec_codes;      // rows of codes in whole, aligned 16-byte vectors
};

// Copies rows [q0, q0 + nq) x columns [col0, col0 + cols) of a T [*, N] matrix into dst [nq][cols]
// (cp.async where whole aligned vectors allow, plain loads and zeros past N elsewhere).
// Threads t = 0 .. nthreads - 1 share the work (a block's first nthreads threads).
template <typename T>
__device__ __forceinline__ void stage_typed(T* dst, const T* src, int q0, int nq, int64_t col0, int cols, int64_t N,
                                            bool vec, uint64_t policy, int t = threadIdx.x, int nthreads = kThreads) {
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  const int per_row = cols / V;
  for (int c = t; c < nq * per_row; c += nthreads) {
    const int qi = c / per_row;
    const int e = (c - qi * per_row) * V;
    const int64_t gcol = col0 + e;
    const T* s = src + static_cast<int64_t>(q0 + qi) * N + gcol;
    T* d = dst + qi * cols + e;
    if (vec && gcol + V <= N) {
      copy16_async(d, s, policy);
    } else {
#pragma unroll
      for (int i = 0; i < V; ++i) d[i] = gcol + i < N ? s[i] : Elem<T>::from_float(0.0f);
    }
  }
}

// The same for packed bytes: rows [q0, q0 + nq) x bytes [byte0, byte0 + bytes) of a uint8 [*, row_bytes].
__device__ __forceinline__ void stage_bytes(uint8_t* dst, const uint8_t* src, int q0, int nq, int64_t byte0, int bytes,
                                            int64_t row_bytes, bool vec, int t = threadIdx.x, int nthreads = kThreads) {
  const int per_row = bytes / 16;
  for (int c = t; c < nq * per_row; c += nthreads) {
    const int qi = c / per_row;
    const int e = (c - qi * per_row) * 16;
    const int64_t gb = byte0 + e;
    const uint8_t* s = src + static_cast<int64_t>(q0 + qi) * row_bytes + gb;
    uint8_t* d = dst + qi * bytes + e;
    if (vec && gb + 16 <= row_bytes) {
      copy16_async_plain(d, s);
    } else {
#pragma unroll
      for (int i = 0; i < 16; ++i) d[i] = gb + i < row_bytes ? s[i] : 0;
    }
  }
}

// 16 bytes of T as floats.
template <typename T>
__device__ __forceinline__ void unpack16(const uint4& u, float* f) {
  const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
  for (int i = 0; i < 16 / static_cast<int>(sizeof(T)); ++i) f[i] = Elem<T>::to_float(e[i]);
}

// The scale of column v's accumulator: x (1 + c / code_factor(v)) (see the product loop).
__device__ __forceinline__ constexpr float code_factor(int v) { return v % 8 == 4 ? 128.0f : 16.0f; }

// The 8 codes of a 32-bit word as floats 1 + c / code_factor(k), one shift and one logical
// operation each: code k into the mantissa of 1.0f (bits 19-22, factor 16; code 4 is at bits
// 16-19 already, factor 128, no shift).
__device__ __forceinline__ void word_floats(uint32_t word, float (&f)[8]) {
  constexpr uint32_t kMask16 = 0x00780000u, kMask128 = 0x000f0000u, kOne = 0x3f800000u;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    if (k == 4) {
      f[k] = __uint_as_float(and_or(word, kMask128, kOne));
    } else {
      const uint32_t bits = k < 4 ? (word << (19 - 4 * k)) : (word >> (4 * k - 19));
      f[k] = __uint_as_float(and_or(bits, kMask16, kOne));
    }
  }
}

// Scales s and zero points z of group g (V = 16 / sizeof(T) consecutive columns) of a thread's
// columns in a staged block row: scales and typed zero points from shared memory, packed zero
// points from zw (nibble v of word v / 8; 0x88888888 words when there are none).
template <typename T>
__device__ __forceinline__ void group_scale_zero(const T* scales, const T* zero_typed, const uint32_t* zw,
                                                 int zero_kind, int g, float* s, float* z) {
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  unpack16<T>(reinterpret_cast<const uint4*>(scales)[g], s);
  if (zero_kind == static_cast<int>(ZeroPointKind::kTyped)) {
    unpack16<T>(reinterpret_cast<const uint4*>(zero_typed)[g], z);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const int v = g * V + i;
      z[i] = static_cast<float>((zw[v / 8] >> (4 * (v % 8))) & 0xfu);
    }
  }
}

// Rows [r0, r1) of K slab `split` and its quantization blocks [q0, q0 + nq).
struct Slab {
  int r0, r1, q0, nq;
};

__device__ __forceinline__ Slab slab_of(int split, int rows_per_split, int K, int log_g) {
  Slab sl;
  sl.r0 = split * rows_per_split;
  sl.r1 = min(sl.r0 + rows_per_split, K);
  sl.q0 = sl.r0 >> log_g;
  sl.nq = ((sl.r1 - 1) >> log_g) - sl.q0 + 1;
  return sl;
}

// A decode block's thread (tid, its lane and warp) and work: columns tile blockIdx.x, K slab
// blockIdx.y.
struct BlockWork {
  int tid, lane, warp, tile, split;
  Slab sl;
};

__device__ __forceinline__ BlockWork block_work(int rows_per_split, int K, int log_g) {
  BlockWork w;
  w.tid = threadIdx.x;
  w.lane = w.tid & 31;
  w.warp = w.tid >> 5;
  w.tile = blockIdx.x;
  w.split = blockIdx.y;
  w.sl = slab_of(w.split, rows_per_split, K, log_g);
  return w;
}

// A thread's share of the product: column thread ct of cts, row group rg of rgs, kept rows
// [jb, je) of count (none when probe == 2: timing without the product).
struct RowShare {
  int ct, rg, jb, je;
};

__device__ __forceinline__ RowShare row_share(int tid, int cts, int rgs, int count, int probe) {
  RowShare s;
  s.ct = tid % cts;
  s.rg = tid / cts;
  s.jb = s.rg * count / rgs;
  s.je = probe == 2 ? s.jb : (s.rg + 1) * count / rgs;
  return s;
}

// Stages slab sl's block scales and zero points (of a tile of tc columns from col0, byte0) into
// the dynamic shared memory at a.scale_offset and a.zero_offset, threads t of nthreads sharing
// the copies; then commits them as one cp.async group.
template <typename T>
__device__ __forceinline__ void stage_slab_weights(unsigned char* s_dyn, const WeightArgs& a, const Slab& sl, int64_t col0,
                                                   int64_t byte0, int tc, uint64_t policy, int t, int nthreads) {
  stage_typed<T>(reinterpret_cast<T*>(s_dyn + a.scale_offset), static_cast<const T*>(a.scales), sl.q0, sl.nq, col0, tc,
                 a.N, a.vec_scales != 0, policy, t, nthreads);
  if (a.zero_kind == static_cast<int>(ZeroPointKind::kPacked)) {
    stage_bytes(s_dyn + a.zero_offset, static_cast<const uint8_t*>(a.zero_points), sl.q0, sl.nq, byte0, tc / 2,
                a.row_bytes, a.vec_zero != 0, t, nthreads);
  } else if (a.zero_kind == static_cast<int>(ZeroPointKind::kTyped)) {
    stage_typed<T>(reinterpret_cast<T*>(s_dyn + a.zero_offset), static_cast<const T*>(a.zero_points), sl.q0, sl.nq,
                   col0, tc, a.N, a.vec_scales != 0, policy, t, nthreads);
  }
  commit_async_copies();
}

// Adds a quantization block's share to the sums of a thread's NC columns for MT tokens: sum over
// the thread's rows of x (c - z) s = s (f (acc - Σx) - z Σx), acc being Σ x (1 + c / f); then
// clears acc and Σx (sx). scale, zero_typed: the block's staged scales and typed zero points at
// the thread's first column; zero_packed: its packed zero points (NC / 2 bytes).
template <typename T, int MT, int NC>
__device__ __forceinline__ void flush_block(const T* scale, const T* zero_typed, const uint8_t* zero_packed,
                                            int zero_kind, float (&acc)[MT][NC], float (&sx)[MT],
                                            float (&tot)[MT][NC]) {
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  static_assert(NC == 32 || NC == 16, "16 or 8 bytes of packed zero points");
  uint32_t zw[NC / 8];
  if constexpr (NC == 32) {
    uint4 zp = make_uint4(0x88888888u, 0x88888888u, 0x88888888u, 0x88888888u);
    if (zero_kind == static_cast<int>(ZeroPointKind::kPacked)) zp = *reinterpret_cast<const uint4*>(zero_packed);
    zw[0] = zp.x, zw[1] = zp.y, zw[2] = zp.z, zw[3] = zp.w;
  } else {
    uint2 zp = make_uint2(0x88888888u, 0x88888888u);
    if (zero_kind == static_cast<int>(ZeroPointKind::kPacked)) zp = *reinterpret_cast<const uint2*>(zero_packed);
    zw[0] = zp.x, zw[1] = zp.y;
  }
#pragma unroll
  for (int g = 0; g < NC / V; ++g) {
    float s[V], z[V];
    group_scale_zero<T>(scale, zero_typed, zw, zero_kind, g, s, z);
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const int v = g * V + i;
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        const float t = fmaf(code_factor(v), acc[m][v] - sx[m], -z[i] * sx[m]);
        tot[m][v] = fmaf(s[i], t, tot[m][v]);
        acc[m][v] = 0.0f;
      }
    }
  }
#pragma unroll
  for (int m = 0; m < MT; ++m) sx[m] = 0.0f;
}

// The sum over cluster ranks 0 .. ranks - 1 (at most MAXC) of the float at `local` in each
// rank's shared memory, in rank order.
template <int MAXC>
__device__ __forceinline__ float cluster_sum(const float* local, int ranks) {
  float part[MAXC];
#pragma unroll
  for (int q = 0; q < MAXC; ++q) part[q] = q < ranks ? load_cluster_shared(local, static_cast<unsigned>(q)) : 0.0f;
  float total = 0.0f;
#pragma unroll
  for (int q = 0; q < MAXC; ++q)
    if (q < ranks) total += part[q];
  return total;
}

// Block (tile, split): columns [tile * 32 CT, +32 CT) of rows [split * rows_per_split, +rows_per_split).
// CT threads across the tile (16 bytes of codes each) x kThreads / CT row groups; row group g takes
// the g-th contiguous share of the slab's kept rows, in row order, so a thread crosses few block
// boundaries.
template <typename T, int MT, int CT, Gating GATING, int S>
__global__ void __launch_bounds__(kThreads, MT == 1 ? 2 : 1)
    nbits_decode_kernel(const T* __restrict__ x, const __grid_constant__ DecodeArgs a, NbitsGate gate) {
  constexpr int RG = kThreads / CT;
  constexpr int TC = CT * kColsPerThread;  // columns of a tile
  constexpr bool kClusterable = TC <= kMaxSlab;  // a cluster plan's sums live in s_x
  extern __shared__ __align__(16) unsigned char s_dyn[];
  __shared__ int s_rows[kMaxSlab];
  __shared__ __align__(16) float s_x[MT][kMaxSlab];
  __shared__ int s_warp_count[kThreads / 32];

  const BlockWork bw = block_work(a.rows_per_split, a.K, a.log_g);
  const int tid = bw.tid, lane = bw.lane, warp = bw.warp, split = bw.split;
  const int r0 = bw.sl.r0, r1 = bw.sl.r1, q0 = bw.sl.q0;
  const int64_t col0 = static_cast<int64_t>(bw.tile) * TC;
  const int64_t byte0 = static_cast<int64_t>(bw.tile) * CT * kCodeBytes;
  const bool hints = a.l2_hints != 0;
  const uint64_t stream_policy = l2_policy(hints);
  const uint64_t keep_policy = hints ? l2_policy_keep() : l2_policy(false);

  // 0. Weights, before waiting for the kernel before this one: the slab's block scales and zero
  // points into shared memory (one cp.async group), its score scales into registers.
  const T* s_scale = reinterpret_cast<const T*>(s_dyn + a.scale_offset);
  stage_slab_weights<T>(s_dyn, a, bw.sl, col0, byte0, TC, stream_policy, tid, kThreads);
  float sc[kGateRows];
#pragma unroll
  for (int q = 0; q < kGateRows; ++q) {
    const int r = r0 + q * kThreads + tid;
    sc[q] = r < r1 ? load_float(a.score_scale + r, keep_policy) : 0.0f;
  }

  grid_dependency_wait();  // x and the gate may come from the kernels before (PDL)
  float xs[kGateRows][MT];
#pragma unroll
  for (int q = 0; q < kGateRows; ++q) {
    const int r = r0 + q * kThreads + tid;
#pragma unroll
    for (int m = 0; m < MT; ++m)
      xs[q][m] = (m < a.M && r < r1) ? Elem<T>::to_float(x[static_cast<int64_t>(m) * a.K + r]) : 0.0f;
  }
  uint32_t gate_key[MT];
  int gate_cut[MT];
  token_gates<GATING>(gate, a.M, gate_key, gate_cut);

  // 1. Gate the slab's rows for every token; list the rows kept by any token, in row order.
  const int count = compact_slab<kThreads>(
      xs, sc, r0, r1, a.M, gate_key, gate_cut, tid, lane, warp, s_warp_count,
      [&](int pos, int r, const float(&xv)[MT]) {
        s_rows[pos] = r;
#pragma unroll
        for (int m = 0; m < MT; ++m) s_x[m][pos] = xv[m];
        // The slab's first kept rows start streaming into the L2 now, while the rest is gated.
        if (pos < a.prefetch_rows) {
          const uint8_t* row = a.b + static_cast<int64_t>(r) * a.row_bytes + byte0;
          for (int o = 0; o < CT * kCodeBytes && byte0 + o < a.row_bytes; o += 128) prefetch_line_l2(row + o);
        }
      });
  allow_dependent_launch();

  // 2. Multiply: row group rg takes kept rows [jb, je).
  const RowShare share = row_share(tid, CT, RG, count, a.probe);
  const int ct = share.ct, rg = share.rg, jb = share.jb, je = share.je;
  const int64_t my_byte = byte0 + ct * kCodeBytes;
  const bool has_codes = my_byte < a.row_bytes;
  const uint8_t* __restrict__ bcol = a.b + my_byte;
  uint4* s_w = reinterpret_cast<uint4*>(s_dyn);  // [S][kBatchRows][kThreads]
  auto load = [&](int j0, int stage) {
#pragma unroll
    for (int u = 0; u < kBatchRows; ++u) {
      const int j = j0 + u;
      if (j < je && has_codes) {
        const uint8_t* src = bcol + static_cast<int64_t>(s_rows[j]) * a.row_bytes;
        uint4* dst = &s_w[(stage * kBatchRows + u) * kThreads + tid];
        if (a.vec_codes) {
          copy16_async(dst, src, stream_policy);
        } else {
          alignas(16) uint8_t v[16];
#pragma unroll
          for (int i = 0; i < 16; ++i) v[i] = my_byte + i < a.row_bytes ? src[i] : 0;
          *dst = *reinterpret_cast<const uint4*>(v);
        }
      }
    }
    commit_async_copies();  // possibly empty: every thread keeps the same group count
  };

  float acc[MT][kColsPerThread];
  float tot[MT][kColsPerThread];
  float sx[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    sx[m] = 0.0f;
#pragma unroll
    for (int v = 0; v < kColsPerThread; ++v) {
      acc[m][v] = 0.0f;
      tot[m][v] = 0.0f;
    }
  }

  const T* s_zero_t = reinterpret_cast<const T*>(s_dyn + a.zero_offset);
  const uint8_t* s_zero_p = s_dyn + a.zero_offset;
  // Adds block qi's share to the sums.
  auto flush = [&](int qi) {
    const int e = qi * TC + ct * kColsPerThread;
    flush_block<T>(s_scale + e, s_zero_t + e, s_zero_p + qi * (TC / 2) + ct * kCodeBytes, a.zero_kind, acc, sx, tot);
  };

  // S - 1 batches in flight ahead of the one multiplied; every thread commits the same groups
  // (empty ones included), so one wait count holds throughout.
#pragma unroll
  for (int st = 0; st < S - 1; ++st) load(jb + st * kBatchRows, st);
  wait_async_groups<S - 1>();  // this thread's share of the staged scales has landed
  __syncthreads();             // ... and everyone's

  int q_cur = -1;
  int stage = 0;
  for (int j0 = jb; j0 < je; j0 += kBatchRows) {
    load(j0 + (S - 1) * kBatchRows, stage == 0 ? S - 1 : stage - 1);
    wait_async_groups<S - 1>();
#pragma unroll 1
    for (int u = 0; u < kBatchRows; ++u) {
      const int j = j0 + u;
      if (j >= je) break;
      const int q = s_rows[j] >> a.log_g;
      if (q != q_cur) {
        if (q_cur >= 0) flush(q_cur - q0);
        q_cur = q;
      }
      const uint4 w = s_w[(stage * kBatchRows + u) * kThreads + tid];
      const uint32_t wd[4] = {w.x, w.y, w.z, w.w};
      float xm[MT];
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        xm[m] = s_x[m][j];
        sx[m] += xm[m];
      }
      if (a.probe == 1) continue;
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        float f[8];
        word_floats(wd[t], f);
#pragma unroll
        for (int k = 0; k < 8; ++k) {
#pragma unroll
          for (int m = 0; m < MT; ++m) acc[m][8 * t + k] = fmaf(xm[m], f[k], acc[m][8 * t + k]);
        }
      }
    }
    stage = stage == S - 1 ? 0 : stage + 1;
  }
  if (q_cur >= 0) flush(q_cur - q0);

  // 3. Add the row groups in a fixed order: column c = 32 ct + v of the tile is (g, ct, v) of
  // s_red [RG][CT][33] (padded: conflict-free for the stores of a warp and the loads of the sums).
  // Split-K plans store the tile's sums to the partial-sum workspace, cluster plans to s_part
  // [MT][TC] (over s_x, free now) for the cluster to add.
  float* s_red = reinterpret_cast<float*>(s_dyn);
  float* s_part = &s_x[0][0];
  __syncthreads();  // every thread is done with s_w and s_x
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    if (m >= a.M) break;
    if (m > 0) __syncthreads();  // s_red is free again
#pragma unroll
    for (int v = 0; v < kColsPerThread; ++v) s_red[(rg * CT + ct) * 33 + v] = tot[m][v];
    __syncthreads();
    for (int i = tid; i < TC; i += kThreads) {
      float s = 0.0f;
#pragma unroll 8
      for (int g = 0; g < RG; ++g) s += s_red[(g * CT + (i >> 5)) * 33 + (i & 31)];
      if (kClusterable && a.cluster > 0) {
        s_part[m * TC + i] = s;
      } else if (col0 + i < a.N) {
        a.partial[(static_cast<int64_t>(split) * a.M + m) * a.N + col0 + i] = s;
      }
    }
  }

  if (kClusterable && a.cluster > 0) {
    __syncthreads();
    // The cluster is this tile's slabs; block rank r adds columns [r, r + 1) x ceil(TC / cluster)
    // of every slab, in slab order, adds the bias and writes Y.
    cluster_barrier();
    const int per_rank = (TC + a.cluster - 1) / a.cluster;
    const int first = split * per_rank;  // the rank: the cluster spans every split of the tile
    const T* __restrict__ bias = static_cast<const T*>(a.bias);
    T* __restrict__ y = static_cast<T*>(a.y);
    for (int e = tid; e < a.M * per_rank; e += kThreads) {
      const int m = e / per_rank;
      const int c = first + e % per_rank;
      const int64_t gcol = col0 + c;
      if (c < TC && gcol < a.N) {
        float total = cluster_sum<kMaxCluster>(s_part + m * TC + c, a.cluster);
        if (bias != nullptr) total += Elem<T>::to_float(bias[gcol]);
        y[static_cast<int64_t>(m) * a.N + gcol] = Elem<T>::from_float(total);
      }
    }
    cluster_barrier();  // no block leaves while another still reads its shared memory
  }
}

// y[m, n] = T(sum over splits of partial[s, m, n] (+ bias[n])), in a fixed order: lane l of a
// column adds splits l, l + 8, ..., then the 8 lanes are added in order. splits == 0 writes the
// bias (or zeros): the K == 0 case.
constexpr int kReduceCols = 32;
constexpr int kReduceLanes = 8;

template <typename T>
__global__ void __launch_bounds__(kReduceCols * kReduceLanes)
    nbits_reduce_kernel(const float* __restrict__ partial, int splits, const T* __restrict__ bias,
                        T* __restrict__ y, int M, int64_t N) {
  __shared__ float s_sum[kReduceLanes][kReduceCols + 1];
  grid_dependency_wait();
  allow_dependent_launch();
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kReduceCols + threadIdx.x;
  reduce_splits<T>(partial, splits, M, N, n, s_sum, bias, y, N, n);
}

// ---------------------------------------------------------------------------------
// Ring decode (sm_90, one token; nbits_decode.cuh describes it). Measured against the kernel
// above and the variants that led to it (TMA bulk copies, shared-memory rings, 512 threads):
// benchmarks/results/kernel_cuda_nbits_variants_h200.txt and docs/cuda-notes.md.

constexpr int kRingThreads = 256;
constexpr int kRingMaxSlab = 2048;
constexpr int kRingGateRows = kRingMaxSlab / kRingThreads;  // consecutive slab rows a thread gates
constexpr int kRingMaxCluster = 8;
constexpr int kRingMaxDynamicSmem = kMaxStageBytes + 32 * 1024;
static_assert(kRingGateRows * kRingThreads == kRingMaxSlab, "one gating pass");

// 8 bytes of codes through the L2 only (read once per call: no L1 line).
__device__ __forceinline__ uint2 load_codes8(const uint8_t* p) {
  uint2 v;
  asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
  return v;
}

// row_bytes: a multiple of 16; cluster 1: the slabs are one cluster (splits <= 8), 0: partial
// sums [splits, N] (splits > 1) for the reduction kernel; probe 1 skips the arithmetic, 2 the
// loads and the arithmetic; the staged scales and zero points lie after the ring.
struct RingArgs : WeightArgs {
  int splits;  // K slabs
};

template <typename T, int W, int D, Gating GATING>
__global__ void __launch_bounds__(kRingThreads, 2)
    nbits_ring_kernel(const T* __restrict__ x, const __grid_constant__ RingArgs a, NbitsGate gate) {
  constexpr int CTB = W / 8;              // threads across a row of the tile
  constexpr int RG = kRingThreads / CTB;  // row groups
  constexpr int TC = 2 * W;               // columns of the tile
  extern __shared__ __align__(16) unsigned char s_dyn[];
  __shared__ int s_rows[kRingMaxSlab];
  __shared__ float s_x[kRingMaxSlab];
  __shared__ float s_part[TC];
  __shared__ int s_warp_count[kRingThreads / 32];

  const BlockWork bw = block_work(a.rows_per_split, a.K, a.log_g);
  const int tid = bw.tid, lane = bw.lane, warp = bw.warp, split = bw.split;
  const int r0 = bw.sl.r0, r1 = bw.sl.r1, q0 = bw.sl.q0;
  const int64_t col0 = static_cast<int64_t>(bw.tile) * TC;
  const int64_t byte0 = static_cast<int64_t>(bw.tile) * W;

  // 0. Before waiting for the kernel before this one: the slab's block scales and zero points
  // into shared memory (one cp.async group), its score scales into registers.
  const T* s_scale = reinterpret_cast<const T*>(s_dyn + a.scale_offset);
  stage_slab_weights<T>(s_dyn, a, bw.sl, col0, byte0, TC, l2_policy(true), tid, kRingThreads);
  const int gr0 = r0 + tid * kRingGateRows;  // this thread's rows to gate
  float sc[kRingGateRows];
  const uint64_t keep_policy = l2_policy_keep();
#pragma unroll
  for (int i = 0; i < kRingGateRows; ++i)
    sc[i] = gr0 + i < r1 ? load_float(a.score_scale + gr0 + i, keep_policy) : 0.0f;

  grid_dependency_wait();  // x and the gate may come from the kernels before (PDL)

  // 1. Gate; list the kept rows in row order (per-thread counts, one block-wide scan).
  float xv[kRingGateRows];
#pragma unroll
  for (int i = 0; i < kRingGateRows; ++i) xv[i] = gr0 + i < r1 ? Elem<T>::to_float(x[gr0 + i]) : 0.0f;
  uint32_t gate_key;
  int gate_cut;
  token_gate<GATING>(gate, 0, gate_key, gate_cut);
  unsigned mask = 0;
#pragma unroll
  for (int i = 0; i < kRingGateRows; ++i)
    if (gr0 + i < r1 && keep(score_key(xv[i], sc[i]), gr0 + i, gate_key, gate_cut)) mask |= 1u << i;
  const int mine = __popc(mask);
  const int incl = warp_inclusive_scan(mine, lane);
  if (lane == 31) s_warp_count[warp] = incl;
  __syncthreads();
  int pos = incl - mine, count = 0;
#pragma unroll
  for (int w = 0; w < kRingThreads / 32; ++w) {
    const int c = s_warp_count[w];
    pos += w < warp ? c : 0;
    count += c;
  }
#pragma unroll
  for (int i = 0; i < kRingGateRows; ++i) {
    if (mask & (1u << i)) {
      s_rows[pos] = gr0 + i;
      s_x[pos] = xv[i];
      ++pos;
    }
  }
  __syncthreads();
  allow_dependent_launch();

  // 2. Stream and multiply. Row group rg takes kept rows [jb, je); a thread keeps the next D
  // rows' 8 bytes in flight in registers (a ring of D loads, refilled as each row is used).
  const RowShare share = row_share(tid, CTB, RG, count, a.probe);
  const int ct = share.ct, rg = share.rg, jb = share.jb, je = share.je;
  const bool has_codes = byte0 + ct * 8 < a.row_bytes;
  const uint8_t* __restrict__ bcol = a.b + byte0 + ct * 8;
  auto load_row = [&](int j) {
    uint2 w = make_uint2(0u, 0u);
    if (j < je && has_codes) w = load_codes8(bcol + static_cast<int64_t>(s_rows[j]) * a.row_bytes);
    return w;
  };
  uint2 ring[D];
#pragma unroll
  for (int d = 0; d < D; ++d) ring[d] = load_row(jb + d);
  wait_async_groups<0>();  // this thread's share of the staged scales has landed
  __syncthreads();         // ... and everyone's

  float tot[1][16], acc[1][16];
  float sx[1] = {0.0f};
#pragma unroll
  for (int v = 0; v < 16; ++v) {
    tot[0][v] = 0.0f;
    acc[0][v] = 0.0f;
  }
  const T* s_zero_t = reinterpret_cast<const T*>(s_dyn + a.zero_offset);
  const uint8_t* s_zero_p = s_dyn + a.zero_offset;
  // Adds block qi's share to the sums (one token).
  auto flush = [&](int qi) {
    const int e = qi * TC + ct * 16;
    flush_block<T>(s_scale + e, s_zero_t + e, s_zero_p + qi * (TC / 2) + ct * 8, a.zero_kind, acc, sx, tot);
  };
  int q_cur = -1;
  for (int j0 = jb; j0 < je; j0 += D) {
#pragma unroll
    for (int d = 0; d < D; ++d) {
      const int j = j0 + d;
      const uint2 w = ring[d];
      ring[d] = load_row(j + D);  // row j + D takes the slot of row j
      if (j < je && has_codes) {
        const int q = s_rows[j] >> a.log_g;
        if (q != q_cur) {
          if (q_cur >= 0) flush(q_cur - q0);
          q_cur = q;
        }
        const float xj = s_x[j];
        sx[0] += xj;
        if (a.probe == 1) {
          acc[0][0] += __uint_as_float((w.x ^ w.y) & 0x007fffffu);  // keeps the load, no product
          continue;
        }
        const uint32_t wd[2] = {w.x, w.y};
#pragma unroll
        for (int t = 0; t < 2; ++t) {
          float f[8];
          word_floats(wd[t], f);
#pragma unroll
          for (int k = 0; k < 8; ++k) acc[0][8 * t + k] = fmaf(xj, f[k], acc[0][8 * t + k]);
        }
      }
    }
  }
  if (q_cur >= 0) flush(q_cur - q0);

  // 3. The row groups added in a fixed order into s_part [TC]; then the slabs (cluster ranks)
  // in rank order, the bias, and Y. s_red [RG][16][CTB + 1] over the staged scales (done).
  float* s_red = reinterpret_cast<float*>(s_dyn);
  __syncthreads();
#pragma unroll
  for (int v = 0; v < 16; ++v) s_red[(rg * 16 + v) * (CTB + 1) + ct] = tot[0][v];
  __syncthreads();
  const T* __restrict__ bias = static_cast<const T*>(a.bias);
  T* __restrict__ y = static_cast<T*>(a.y);
  for (int c = tid; c < TC; c += kRingThreads) {
    const int cct = c >> 4;
    const int v = c & 15;
    float sum = 0.0f;
#pragma unroll 4
    for (int g = 0; g < RG; ++g) sum += s_red[(g * 16 + v) * (CTB + 1) + cct];
    if (a.splits > 1 && a.cluster == 0) {
      if (col0 + c < a.N) a.partial[static_cast<int64_t>(split) * a.N + col0 + c] = sum;
    } else if (a.splits > 1) {
      s_part[c] = sum;
    } else if (col0 + c < a.N) {
      if (bias != nullptr) sum += Elem<T>::to_float(bias[col0 + c]);
      y[col0 + c] = Elem<T>::from_float(sum);
    }
  }
  if (a.splits > 1 && a.cluster != 0) {
    cluster_barrier();
    const int per_rank = (TC + a.splits - 1) / a.splits;
    const int first = static_cast<int>(cluster_rank()) * per_rank;
    for (int e = tid; e < per_rank; e += kRingThreads) {
      const int c = first + e;
      const int64_t gcol = col0 + c;
      if (c < TC && gcol < a.N) {
        float total = cluster_sum<kRingMaxCluster>(&s_part[c], a.splits);
        if (bias != nullptr) total += Elem<T>::to_float(bias[gcol]);
        y[gcol] = Elem<T>::from_float(total);
      }
    }
    cluster_barrier();  // no block leaves while another still reads its shared memory
  }
}

// ---------------------------------------------------------------------------------
// Dequantization (prefill): w[r, n] = T((code - zero point) * scale), one byte (two columns) a thread.

template <typename T>
__global__ void __launch_bounds__(kThreads)
    nbits_dequantize_kernel(const uint8_t* __restrict__ b, const T* __restrict__ scales, const void* zero_points,
                            int zero_kind, T* __restrict__ w, int K, int64_t N, int64_t row_bytes, int log_g) {
  const int64_t byte = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (byte >= row_bytes) return;
  for (int r = blockIdx.y; r < K; r += gridDim.y) {
    const int q = r >> log_g;
    const unsigned code = b[static_cast<int64_t>(r) * row_bytes + byte];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t n = 2 * byte + h;
      if (n >= N) break;
      float z = 8.0f;
      if (zero_kind == static_cast<int>(ZeroPointKind::kPacked)) {
        const unsigned zb = static_cast<const uint8_t*>(zero_points)[static_cast<int64_t>(q) * row_bytes + byte];
        z = static_cast<float>((zb >> (4 * h)) & 0xfu);
      } else if (zero_kind == static_cast<int>(ZeroPointKind::kTyped)) {
        z = Elem<T>::to_float(static_cast<const T*>(zero_points)[static_cast<int64_t>(q) * N + n]);
      }
      const float c = static_cast<float>((code >> (4 * h)) & 0xfu);
      const float s = Elem<T>::to_float(scales[static_cast<int64_t>(q) * N + n]);
      w[static_cast<int64_t>(r) * N + n] = Elem<T>::from_float((c - z) * s);
    }
  }
}

// The same, COLS columns (COLS / 2 code bytes) of ROWS consecutive rows a thread: the rows share one
// quantization block (ROWS divides every block size), so its scales and zero points are loaded
// once; every row's codes are loaded first, W goes out in 16-byte stores. Needs N % COLS == 0 and
// aligned buffers.
constexpr int kDequantThreads = 128;

template <typename T, int COLS, int ROWS>
__global__ void __launch_bounds__(kDequantThreads)
    nbits_dequantize_vec_kernel(const uint8_t* __restrict__ b, const T* __restrict__ scales,
                                const void* zero_points, int zero_kind, T* __restrict__ w, int K, int64_t N,
                                int64_t row_bytes, int log_g) {
  static_assert(COLS == 8 || COLS == 16, "8 or 16 columns a thread");
  using Codes = std::conditional_t<COLS == 16, uint2, uint32_t>;  // a row's COLS codes
  constexpr int kPerVec = 16 / sizeof(T);                         // values of T in 16 bytes
  const auto word = [](const Codes& c, int i) -> uint32_t {        // the 32 bits holding code i
    if constexpr (COLS == 16) return i < 8 ? c.x : c.y;
    else return c;
  };
  const int64_t group = static_cast<int64_t>(blockIdx.x) * kDequantThreads + threadIdx.x;
  const int64_t n0 = group * COLS;
  if (n0 >= N) return;
  for (int64_t r0 = static_cast<int64_t>(blockIdx.y) * ROWS; r0 < K; r0 += static_cast<int64_t>(gridDim.y) * ROWS) {
    const int64_t q = r0 >> log_g;
    float s[COLS], z[COLS];
    const uint4* sv = reinterpret_cast<const uint4*>(scales + q * N + n0);
#pragma unroll
    for (int v = 0; v < COLS / kPerVec; ++v) Elem<T>::unpack(sv[v], s + v * kPerVec);
    if (zero_kind == static_cast<int>(ZeroPointKind::kTyped)) {
      const uint4* zv = reinterpret_cast<const uint4*>(static_cast<const T*>(zero_points) + q * N + n0);
#pragma unroll
      for (int v = 0; v < COLS / kPerVec; ++v) Elem<T>::unpack(zv[v], z + v * kPerVec);
    } else {
      Codes zb;  // no zero points: 8
      if constexpr (COLS == 16) zb = make_uint2(0x88888888u, 0x88888888u);
      else zb = 0x88888888u;
      if (zero_kind == static_cast<int>(ZeroPointKind::kPacked))
        zb = *reinterpret_cast<const Codes*>(static_cast<const uint8_t*>(zero_points) + q * row_bytes +
                                             group * (COLS / 2));
#pragma unroll
      for (int i = 0; i < COLS; ++i) z[i] = static_cast<float>((word(zb, i) >> (4 * (i % 8))) & 0xfu);
    }
    Codes codes[ROWS];
#pragma unroll
    for (int j = 0; j < ROWS; ++j)
      codes[j] = r0 + j < K ? __ldcs(reinterpret_cast<const Codes*>(b + (r0 + j) * row_bytes + group * (COLS / 2)))
                            : Codes{};
#pragma unroll
    for (int j = 0; j < ROWS; ++j) {
      const int64_t r = r0 + j;
      if (r >= K) break;
      // Byte i / 2 holds column i in its low (even i) or high nibble: bits 4 (i % 8) of its word.
      alignas(16) T out[COLS];
#pragma unroll
      for (int i = 0; i < COLS; ++i) {
        const float c = static_cast<float>((word(codes[j], i) >> (4 * (i % 8))) & 0xfu);
        out[i] = Elem<T>::from_float((c - z[i]) * s[i]);
      }
      uint4* dst = reinterpret_cast<uint4*>(w + r * N + n0);
#pragma unroll
      for (int v = 0; v < COLS / kPerVec; ++v) dst[v] = reinterpret_cast<const uint4*>(out)[v];
    }
  }
}

// ---------------------------------------------------------------------------------
// Host side

constexpr size_t kAlign = 256;
size_t align_bytes(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
int align16(int n) { return (n + 15) / 16 * 16; }

int log2_exact(int64_t v) {
  int l = 0;
  while ((int64_t{1} << l) < v) ++l;
  return (int64_t{1} << l) == v ? l : -1;
}

int64_t row_bytes_of(const NbitsProblem& p) { return (p.N + 1) / 2; }

// Shared bytes of one slab's block scales and zero points: at most ceil(rows / G) + 1 blocks
// (a slab need not start on a block boundary).
template <typename T>
void stage_layout(const NbitsProblem& p, int col_threads, int64_t rows, int* scale_bytes, int* zero_bytes) {
  const int64_t tc = static_cast<int64_t>(col_threads) * kColsPerThread;
  const int64_t nq = (rows + p.block_size - 1) / p.block_size + 1;
  *scale_bytes = align16(static_cast<int>(nq * tc * static_cast<int64_t>(sizeof(T))));
  *zero_bytes = p.zero_kind == ZeroPointKind::kPacked  ? align16(static_cast<int>(nq * tc / 2))
                : p.zero_kind == ZeroPointKind::kTyped ? *scale_bytes
                                                       : 0;
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// Raises a decode kernel's shared-memory limit (and allows clusters of 16) once per device.
// The shared-memory carveout of every kernel of the decode path: the largest, so that consecutive
// decode and reduction kernels need no reconfiguration of the multiprocessors between them.
template <typename Kernel>
cudaError_t set_carveout_once(Kernel kernel, std::atomic<uint64_t>& done) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const uint64_t bit = device < 64 ? (uint64_t{1} << device) : 0;
  if (bit != 0 && (done.load(std::memory_order_acquire) & bit)) return cudaSuccess;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                             static_cast<int>(cudaSharedmemCarveoutMaxShared));
  if (err == cudaSuccess && bit != 0) done.fetch_or(bit, std::memory_order_release);
  return err;
}

template <typename Kernel>
cudaError_t prepare_kernel(Kernel kernel, std::atomic<uint64_t>& done, bool big_cluster) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const uint64_t bit = device < 32 ? (uint64_t{1} << (2 * device + (big_cluster ? 1 : 0))) : 0;
  if (bit != 0 && (done.load(std::memory_order_acquire) & bit)) return cudaSuccess;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxDynamicSmem);
  if (err == cudaSuccess && big_cluster)
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  if (err == cudaSuccess && bit != 0) done.fetch_or(bit, std::memory_order_release);
  return err;
}

template <typename T, int MT, int CT, Gating GATING, int S>
cudaError_t launch_decode_kernel(const NbitsProblem& p, const NbitsPlan& plan, DecodeArgs args, const NbitsGate& gate,
                                 int stage_bytes, Stream stream) {
  auto* kernel = nbits_decode_kernel<T, MT, CT, GATING, S>;
  static std::atomic<uint64_t> done{0};
  cudaError_t err = prepare_kernel(kernel, done, plan.cluster > 8);
  if (err != cudaSuccess) return err;
  if (plan.max_carveout) {
    static std::atomic<uint64_t> carveout_done{0};
    err = set_carveout_once(kernel, carveout_done);
    if (err != cudaSuccess) return err;
  }
  args.scale_offset += work_bytes(S);
  args.zero_offset += work_bytes(S);
  const size_t smem = static_cast<size_t>(work_bytes(S) + stage_bytes);
  const int64_t tiles = (row_bytes_of(p) + CT * kCodeBytes - 1) / (CT * kCodeBytes);
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(plan.splits));
  const bool pdl = plan.pdl && (GATING == Gating::kTopK || plan.pdl_first);
  return launch_clustered(stream, kernel, grid, dim3(kThreads), smem, pdl, static_cast<unsigned>(plan.cluster),
                          static_cast<const T*>(p.x), args, gate);
}

// One token: 2, 3 or 4 batches in flight; two tokens (twice the registers, one block per SM): 2.
template <typename T, int MT, int CT, Gating GATING>
cudaError_t launch_decode_stages(const NbitsProblem& p, const NbitsPlan& plan, const DecodeArgs& args,
                                 const NbitsGate& gate, int stage_bytes, Stream stream) {
  if constexpr (MT == 1) {
    if (plan.stages >= 4) return launch_decode_kernel<T, MT, CT, GATING, 4>(p, plan, args, gate, stage_bytes, stream);
    if (plan.stages == 3) return launch_decode_kernel<T, MT, CT, GATING, 3>(p, plan, args, gate, stage_bytes, stream);
  }
  return launch_decode_kernel<T, MT, CT, GATING, 2>(p, plan, args, gate, stage_bytes, stream);
}

template <typename T, int MT, Gating GATING>
cudaError_t launch_decode_ct(const NbitsProblem& p, const NbitsPlan& plan, const DecodeArgs& args,
                             const NbitsGate& gate, int stage_bytes, Stream stream) {
  switch (plan.col_threads) {
    case 8: return launch_decode_stages<T, MT, 8, GATING>(p, plan, args, gate, stage_bytes, stream);
    case 16: return launch_decode_stages<T, MT, 16, GATING>(p, plan, args, gate, stage_bytes, stream);
    case 32: return launch_decode_stages<T, MT, 32, GATING>(p, plan, args, gate, stage_bytes, stream);
    case 64: return launch_decode_stages<T, MT, 64, GATING>(p, plan, args, gate, stage_bytes, stream);
    default: return cudaErrorInvalidValue;
  }
}

template <typename T>
cudaError_t launch_reduce(const NbitsProblem& p, const float* partial, int splits, bool pdl, bool max_carveout,
                          Stream stream) {
  if (max_carveout) {
    static std::atomic<uint64_t> carveout_done{0};
    const cudaError_t err = set_carveout_once(nbits_reduce_kernel<T>, carveout_done);
    if (err != cudaSuccess) return err;
  }
  const dim3 grid(static_cast<unsigned>((p.N + kReduceCols - 1) / kReduceCols),
                  static_cast<unsigned>(std::min<int64_t>(p.M, 65535)));
  return launch_clustered(stream, nbits_reduce_kernel<T>, grid, dim3(kReduceCols, kReduceLanes), 0, pdl, 0u, partial,
                          splits,
                          static_cast<const T*>(p.bias), static_cast<T*>(p.y), static_cast<int>(p.M), p.N);
}

// The kernel arguments that both decode kernels take alike from the problem: its pointers,
// shape and zero points, and whether the scale and zero-point rows are whole aligned 16-byte
// vectors.
template <typename T>
void set_problem_args(const NbitsProblem& p, WeightArgs& a) {
  a.b = p.b;
  a.scales = p.scales;
  a.zero_points = p.zero_points;
  a.score_scale = p.score_scale;
  a.bias = p.bias;
  a.y = p.y;
  a.N = p.N;
  a.row_bytes = row_bytes_of(p);
  a.K = static_cast<int>(p.K);
  a.log_g = log2_exact(p.block_size);
  a.zero_kind = static_cast<int>(p.zero_kind);
  a.vec_scales = (p.N * static_cast<int64_t>(sizeof(T))) % 16 == 0 && aligned16(p.scales) &&
                 (p.zero_kind != ZeroPointKind::kTyped || aligned16(p.zero_points));
  a.vec_zero = a.row_bytes % 16 == 0 && aligned16(p.zero_points);
}

template <typename T, int W, int D, Gating GATING>
cudaError_t launch_ring_kernel(const NbitsProblem& p, const NbitsPlan& plan, const NbitsGate& gate, void* workspace,
                               Stream stream) {
  auto* kernel = nbits_ring_kernel<T, W, D, GATING>;
  static std::atomic<uint64_t> done{0};
  cudaError_t err = allow_dynamic_smem_once(kernel, kRingMaxDynamicSmem, done);
  if (err != cudaSuccess) return err;
  RingArgs a = {};
  set_problem_args<T>(p, a);
  a.rows_per_split = static_cast<int>(plan.ring_rows);
  a.splits = plan.ring_splits;
  a.cluster = plan.ring_cluster ? 1 : 0;
  a.partial = static_cast<float*>(workspace);
  a.probe = plan.probe;
  int scale_bytes = 0, zero_bytes = 0;
  stage_layout<T>(p, W / 16, plan.ring_rows, &scale_bytes, &zero_bytes);  // W / 16 threads of 32 columns = 2 W
  if (scale_bytes + zero_bytes > kMaxStageBytes) return cudaErrorInvalidValue;
  a.scale_offset = 0;
  a.zero_offset = a.scale_offset + scale_bytes;
  // The row groups' sums go over the ring and the staged scales at the end.
  const int red_bytes = (kRingThreads / (W / 8)) * 16 * (W / 8 + 1) * 4;
  const size_t smem = static_cast<size_t>(std::max(a.zero_offset + zero_bytes, red_bytes));
  const int64_t tiles = (a.row_bytes + W - 1) / W;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(plan.ring_splits));
  return launch_clustered(stream, kernel, grid, dim3(kRingThreads), smem, plan.pdl && plan.pdl_first,
                          plan.ring_cluster && plan.ring_splits > 1 ? static_cast<unsigned>(plan.ring_splits) : 0u,
                          static_cast<const T*>(p.x), a, gate);
}

template <typename T, int D>
cudaError_t launch_ring_depth(const NbitsProblem& p, const NbitsPlan& plan, const NbitsGate& gate, void* workspace,
                              Stream stream) {
  return with_gating(p.gating, [&](auto rule) {
    constexpr Gating G = decltype(rule)::value;
    switch (plan.ring_tile) {
      case 64: return launch_ring_kernel<T, 64, D, G>(p, plan, gate, workspace, stream);
      case 128: return launch_ring_kernel<T, 128, D, G>(p, plan, gate, workspace, stream);
      case 256: return launch_ring_kernel<T, 256, D, G>(p, plan, gate, workspace, stream);
      default: return cudaErrorInvalidValue;
    }
  });
}

template <typename T>
cudaError_t launch_ring(const NbitsProblem& p, const NbitsPlan& plan, const NbitsGate& gate, void* workspace,
                        Stream stream) {
  const cudaError_t err = plan.ring_slots == 16 ? launch_ring_depth<T, 16>(p, plan, gate, workspace, stream)
                                                : launch_ring_depth<T, 8>(p, plan, gate, workspace, stream);
  if (err != cudaSuccess || plan.ring_cluster || plan.ring_splits == 1) return err;
  return launch_reduce<T>(p, static_cast<const float*>(workspace), plan.ring_splits, plan.pdl, false, stream);
}

// Whether the ring kernel takes the problem: one token, whole 16-byte vectors of codes.
bool ring_eligible(const NbitsProblem& p) {
  return p.M == 1 && p.K > 0 && p.N > 0 && row_bytes_of(p) % 16 == 0 && aligned16(p.b);
}

bool bad_ring_plan(const NbitsPlan& plan, const NbitsProblem& p) {
  return !ring_eligible(p) || (plan.ring_tile != 64 && plan.ring_tile != 128 && plan.ring_tile != 256) ||
         plan.ring_rows <= 0 || plan.ring_rows > kRingMaxSlab || plan.ring_rows % 32 != 0 || plan.ring_splits < 1 ||
         (plan.ring_cluster && plan.ring_splits > kRingMaxCluster) ||
         plan.ring_splits != (p.K + plan.ring_rows - 1) / plan.ring_rows || plan.ring_splits > 65535 ||
         (plan.ring_slots != 8 && plan.ring_slots != 16);
}

// The ring plan: the tile (widest first) and slab count (<= 8, slabs <= 2048 rows) that fill
// most of blocks_per_sm x SMs without exceeding it; false when none fits.
template <typename T>
bool make_ring_plan(const NbitsProblem& p, const DeviceInfo& device, int blocks_per_sm, int col_threads,
                    bool cluster, NbitsPlan* plan) {
  if (device.cc_major < 9 || !ring_eligible(p)) return false;
  const int bpsm = blocks_per_sm > 0 ? std::min(blocks_per_sm, 16) : 2;
  const int max_splits = cluster ? kRingMaxCluster : 64;
  const int64_t limit = static_cast<int64_t>(bpsm) * std::max(device.sm_count, 1);
  // Among the plans of at most `limit` blocks the one with most blocks (widest tile on ties); if
  // none is that small (very wide N), the one with fewest.
  int64_t best_blocks = 0;
  bool best_fits = false;
  for (const int w : {256, 128, 64}) {
    if ((col_threads == 8 || col_threads == 16 || col_threads == 32) && col_threads * 8 != w) continue;
    const int64_t tiles = (row_bytes_of(p) + w - 1) / w;
    for (int splits = 1; splits <= max_splits; ++splits) {
      const int64_t rows = ((p.K + splits - 1) / splits + 31) / 32 * 32;
      if (rows > kRingMaxSlab) continue;
      int scale_bytes = 0, zero_bytes = 0;
      stage_layout<T>(p, w / 16, rows, &scale_bytes, &zero_bytes);
      if (scale_bytes + zero_bytes > kMaxStageBytes) continue;
      const int64_t real = (p.K + rows - 1) / rows;
      const int64_t blocks = tiles * real;
      const bool fits = blocks <= limit;
      const bool better = best_blocks == 0 || (fits && (!best_fits || blocks > best_blocks)) ||
                          (!fits && !best_fits && blocks < best_blocks);
      if (better) {
        best_blocks = blocks;
        best_fits = fits;
        plan->ring_tile = w;
        plan->ring_rows = rows;
        plan->ring_splits = static_cast<int>(real);
      }
    }
  }
  if (best_blocks == 0) return false;
  plan->ring_slots = 8;
  plan->ring_cluster = cluster && plan->ring_splits > 1;
  plan->pdl_first = plan->pdl && plan->ring_cluster;
  return true;
}

bool bad_problem(const NbitsProblem& p) {
  return p.M < 0 || p.K < 0 || p.N < 0 || p.K > INT_MAX / 2 || p.M > INT_MAX || p.block_size < 16 ||
         log2_exact(p.block_size) < 0 || (p.zero_kind != ZeroPointKind::kNone && p.zero_points == nullptr);
}

bool bad_plan(const NbitsPlan& plan, const NbitsProblem& p) {
  const bool ct_ok = plan.col_threads == 8 || plan.col_threads == 16 || plan.col_threads == 32 ||
                     plan.col_threads == 64;
  const bool cluster_ok = plan.cluster == 0 || (plan.cluster >= 2 && plan.cluster <= kMaxCluster &&
                                                plan.cluster == plan.splits && plan.col_threads <= 32);
  return !plan.decode || p.M > kNbitsMaxDecodeTokens || !ct_ok || !cluster_ok || plan.stages < 2 ||
         plan.stages > kMaxStages || plan.rows_per_split <= 0 ||
         plan.rows_per_split > kNbitsMaxSlabRows || plan.rows_per_split % 32 != 0 ||
         plan.splits != (p.K + plan.rows_per_split - 1) / plan.rows_per_split || plan.splits > 65535;
}

}  // namespace

template <typename T>
NbitsPlan MakeNbitsPlan(const NbitsProblem& p, const DeviceInfo& device, int blocks_per_sm, int col_threads,
                        bool allow_cluster, bool allow_ring) {
  NbitsPlan plan;
  plan.decode = p.M <= kNbitsMaxDecodeTokens;
  plan.pdl = device.cc_major >= 9;
  if (!plan.decode || p.M == 0 || p.K == 0 || p.N == 0) return plan;
  // About two blocks per multiprocessor for one token (at most: a grid a little over that lands
  // unevenly); one for two tokens, whose kernel takes twice the registers.
  const int default_bpsm = p.M == 1 ? 2 : 1;
  const int64_t target =
      static_cast<int64_t>(blocks_per_sm > 0 ? blocks_per_sm : default_bpsm) * std::max(device.sm_count, 1);
  auto slab_rows = [&](int ct, int64_t* tiles_out) {
    const int64_t tile_bytes = static_cast<int64_t>(ct) * kCodeBytes;
    const int64_t tiles = (row_bytes_of(p) + tile_bytes - 1) / tile_bytes;
    const int64_t want_splits = std::max<int64_t>(1, target / tiles);
    const int64_t rows = (p.K + want_splits - 1) / want_splits;
    *tiles_out = tiles;
    return std::min<int64_t>(std::max<int64_t>((rows + 31) / 32 * 32, 32), kNbitsMaxSlabRows);
  };
  // The widest tile (32, 16 or 8 threads: 512, 256 or 128 bytes of a row) whose slabs keep at
  // least 128 rows: on the H200 (launchers, docs/cuda-notes.md) 512-byte tiles were the fastest
  // for 4096x14336 and 14336x4096 and 2-4 us slower where they cut 4096x4096 into 64-row slabs.
  int64_t tiles = 0;
  int64_t rows = 0;
  plan.col_threads = col_threads;
  if (plan.col_threads <= 0) {
    for (const int ct : {32, 16, 8}) {
      plan.col_threads = ct;
      rows = slab_rows(ct, &tiles);
      if (rows >= 128) break;
    }
  }
  rows = slab_rows(plan.col_threads, &tiles);
  // The slab's block scales and zero points must fit their shared-memory stage.
  for (;;) {
    int scale_bytes = 0, zero_bytes = 0;
    stage_layout<T>(p, plan.col_threads, rows, &scale_bytes, &zero_bytes);
    if (scale_bytes + zero_bytes <= kMaxStageBytes || rows <= 32) break;
    rows = std::max<int64_t>(32, (rows / 2 + 31) / 32 * 32);
  }
  plan.rows_per_split = rows;
  plan.splits = (p.K + rows - 1) / rows;
  plan.stages = p.M == 1 ? 3 : 2;
  // One cluster per column tile when its slabs fit one (2 to 16 blocks, sm_90): the slabs are
  // added in distributed shared memory and no reduction kernel follows.
  // Clusters of more than 8 blocks (non-portable) ran in several waves on the H200 (a cluster
  // of 16 with two blocks per SM, 4096x4096: 14.3 against 9.4 us split-K).
  if (allow_cluster && device.cc_major >= 9 && plan.splits >= 2 && plan.splits <= 8 && plan.col_threads <= 32)
    plan.cluster = static_cast<int>(plan.splits);
  // The decode kernel PDL-launched after the previous op where it is the op's only kernel, or
  // the grid is narrow (the float op's measurements, docs/cuda-notes.md).
  plan.pdl_first = plan.pdl && (plan.cluster > 0 || tiles <= 16);
  if (allow_ring) make_ring_plan<T>(p, device, blocks_per_sm, col_threads, allow_cluster, &plan);
  return plan;
}

template <typename T>
size_t NbitsDecodeWorkspaceBytes(const NbitsProblem& p, const NbitsPlan& plan) {
  if (plan.ring_tile > 0 && !plan.ring_cluster && plan.ring_splits > 1 && p.N > 0)
    return align_bytes(static_cast<size_t>(plan.ring_splits) * static_cast<size_t>(p.N) * 4);
  if (!plan.decode || plan.cluster > 0 || plan.ring_tile > 0 || p.M == 0 || p.N == 0 || p.K == 0) return 0;
  return align_bytes(static_cast<size_t>(plan.splits) * static_cast<size_t>(p.M) * static_cast<size_t>(p.N) * 4);
}

template <typename T>
cudaError_t LaunchNbitsDecode(const NbitsProblem& p, const NbitsPlan& plan, const NbitsGate& gate, void* workspace,
                              Stream stream) {
  if (!stream.valid()) return cudaErrorInvalidResourceHandle;
  if (bad_problem(p) || p.M > kNbitsMaxDecodeTokens) return cudaErrorInvalidValue;
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  if (p.K == 0) return launch_reduce<T>(p, nullptr, 0, false, false, stream);  // Y = bias or 0
  if (p.gating == Gating::kThreshold ? gate.threshold == nullptr : (gate.keys == nullptr || gate.cuts == nullptr))
    return cudaErrorInvalidValue;
  if (plan.ring_tile > 0) {
    if (bad_ring_plan(plan, p) || (workspace == nullptr && NbitsDecodeWorkspaceBytes<T>(p, plan) > 0))
      return cudaErrorInvalidValue;
    return launch_ring<T>(p, plan, gate, workspace, stream);
  }
  if (bad_plan(plan, p)) return cudaErrorInvalidValue;
  if (workspace == nullptr && NbitsDecodeWorkspaceBytes<T>(p, plan) > 0) return cudaErrorInvalidValue;

  DecodeArgs a = {};
  set_problem_args<T>(p, a);
  a.partial = static_cast<float*>(workspace);
  a.M = static_cast<int>(p.M);
  a.rows_per_split = static_cast<int>(plan.rows_per_split);
  a.cluster = plan.cluster;
  a.l2_hints = plan.l2_hints ? 1 : 0;
  a.vec_codes = a.row_bytes % 16 == 0 && aligned16(p.b);
  int scale_bytes = 0, zero_bytes = 0;
  stage_layout<T>(p, plan.col_threads, plan.rows_per_split, &scale_bytes, &zero_bytes);
  if (scale_bytes + zero_bytes > kMaxStageBytes) return cudaErrorInvalidValue;
  a.prefetch_rows = plan.prefetch_rows;
  a.probe = plan.probe;
  a.scale_offset = 0;  // after the work area of the kernel's stage count
  a.zero_offset = scale_bytes;
  const int stage_bytes = scale_bytes + zero_bytes;

  const cudaError_t err = with_gating(p.gating, [&](auto rule) {
    constexpr Gating G = decltype(rule)::value;
    return p.M == 1 ? launch_decode_ct<T, 1, G>(p, plan, a, gate, stage_bytes, stream)
                    : launch_decode_ct<T, 2, G>(p, plan, a, gate, stage_bytes, stream);
  });
  if (err != cudaSuccess || plan.cluster > 0) return err;  // a cluster plan writes Y itself
  return launch_reduce<T>(p, a.partial, static_cast<int>(plan.splits), plan.pdl, plan.max_carveout, stream);
}

// The vectorized kernel with COLS columns and ROWS rows a thread, where p and the buffers allow it.
template <typename T, int COLS, int ROWS>
bool launch_dequantize_vec(const NbitsProblem& p, void* w, Stream stream, cudaError_t* err) {
  const auto aligned = [](const void* ptr, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; };
  if (p.N % COLS != 0 || p.block_size % ROWS != 0 || !aligned16(w) || !aligned16(p.scales) ||
      !aligned(p.b, COLS / 2) || (p.zero_kind == ZeroPointKind::kTyped && !aligned16(p.zero_points)) ||
      (p.zero_kind == ZeroPointKind::kPacked && !aligned(p.zero_points, COLS / 2)))
    return false;
  const int64_t groups = p.N / COLS;
  const dim3 grid(static_cast<unsigned>((groups + kDequantThreads - 1) / kDequantThreads),
                  static_cast<unsigned>(std::min<int64_t>((p.K + ROWS - 1) / ROWS, 65535)));
  *err = launch_clustered(stream, nbits_dequantize_vec_kernel<T, COLS, ROWS>, grid, dim3(kDequantThreads), 0, false,
                          0u, p.b, static_cast<const T*>(p.scales), p.zero_points, static_cast<int>(p.zero_kind),
                          static_cast<T*>(w), static_cast<int>(p.K), p.N, row_bytes_of(p), log2_exact(p.block_size));
  return true;
}

template <typename T>
cudaError_t LaunchNbitsDequantize(const NbitsProblem& p, void* w, Stream stream, DequantKernel kernel) {
  if (!stream.valid()) return cudaErrorInvalidResourceHandle;
  if (bad_problem(p) || w == nullptr) return cudaErrorInvalidValue;
  if (p.K == 0 || p.N == 0) return cudaSuccess;
  bool (*vec)(const NbitsProblem&, void*, Stream, cudaError_t*) = nullptr;
  switch (kernel) {
    case DequantKernel::kAuto:  // H200: 3.4 TB/s moved, 16 x 8 2.2 (kernel_cuda_nbits_dequantize_h200.txt)
    case DequantKernel::kCols8Rows16: vec = launch_dequantize_vec<T, 8, 16>; break;
    case DequantKernel::kCols16Rows8: vec = launch_dequantize_vec<T, 16, 8>; break;
    case DequantKernel::kCols8Rows8: vec = launch_dequantize_vec<T, 8, 8>; break;
    case DequantKernel::kCols16Rows16: vec = launch_dequantize_vec<T, 16, 16>; break;
    case DequantKernel::kBytewise: break;
  }
  cudaError_t err = cudaSuccess;
  if (vec != nullptr && vec(p, w, stream, &err)) return err;
  const int64_t row_bytes = row_bytes_of(p);
  const dim3 grid(static_cast<unsigned>((row_bytes + kThreads - 1) / kThreads),
                  static_cast<unsigned>(std::min<int64_t>(p.K, 65535)));
  return launch_clustered(stream, nbits_dequantize_kernel<T>, grid, dim3(kThreads), 0, false, 0u, p.b,
                          static_cast<const T*>(p.scales), p.zero_points, static_cast<int>(p.zero_kind),
                          static_cast<T*>(w), static_cast<int>(p.K), p.N, row_bytes, log2_exact(p.block_size));
}

#define WINA_NBITS_INSTANTIATE(T)                                                                      \
  template NbitsPlan MakeNbitsPlan<T>(const NbitsProblem&, const DeviceInfo&, int, int, bool, bool);   \
  template size_t NbitsDecodeWorkspaceBytes<T>(const NbitsProblem&, const NbitsPlan&);                 \
  template cudaError_t LaunchNbitsDecode<T>(const NbitsProblem&, const NbitsPlan&, const NbitsGate&, void*, Stream); \
  template cudaError_t LaunchNbitsDequantize<T>(const NbitsProblem&, void*, Stream, DequantKernel);

WINA_NBITS_INSTANTIATE(float)
WINA_NBITS_INSTANTIATE(__half)
WINA_NBITS_INSTANTIATE(__nv_bfloat16)
#undef WINA_NBITS_INSTANTIATE

}  // namespace cuda
}  // namespace wina

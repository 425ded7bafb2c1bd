// Stand-alone check and timing of the WinaSparseMatMulNBits CUDA launchers, without ONNX Runtime.
//
// Built on demand (not part of the library): cmake --build <dir> --target wina_cuda_nbits_bench
//
//   wina_cuda_nbits_bench check [quick]  the decode launcher against a host reference (the oracle's
//                                        dequantization in float32 and its gating rules; top-k
//                                        through the per-token rule the float op's select kernel
//                                        writes, here computed on the host), every dtype, one and
//                                        two tokens, block sizes 16-256, zero points none / uint8 /
//                                        typed, odd shapes, every plan kind (column threads 8-64,
//                                        clusters and split-K, 2-4 batches in flight, L2 prefetch);
//                                        and the dequantization kernel
//                                        against the host, bit for bit
//   wina_cuda_nbits_bench bench [quick]  one token, float16, block 32, 4096x4096, 4096x14336,
//                                        14336x4096, sparsity 0 / 0.25 / 0.4 / 0.5 / 0.65, over
//                                        several plans; each case is a CUDA graph of 32 calls on
//                                        rotating weight copies (>= 512 MiB, past the L2), timed by
//                                        events over its replays; median per call. Also the read
//                                        bandwidth of the GPU in the same run (a 2 GiB read kernel).
//                                        WINA_NB_* variables (see bench_all) pick shapes, sparsities,
//                                        kernels and plans, probes (the kernels without arithmetic or
//                                        loads), and the floor (a plain read of the bytes a call
//                                        reads) and gather (the kept rows' codes in the kernels'
//                                        pattern) reads that bound them; WINA_NB_DEQ=1 times the
//                                        prefill path's dequantization kernels instead
//
// Exit status 1 when a check fails or a CUDA call errs.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "cuda/nbits_decode.cuh"
#include "cuda/tools/bench_common.cuh"

using wina::Gating;
using wina::cuda::NbitsGate;
using wina::cuda::NbitsPlan;
using wina::cuda::NbitsProblem;
using wina::cuda::ZeroPointKind;

namespace {

using namespace wina_bench;

template <typename T> double tolerance();  // of the result's scale: one rounding to T and the sums
template <> double tolerance<float>() { return 5e-5; }
template <> double tolerance<__half>() { return 2e-3; }
template <> double tolerance<__nv_bfloat16>() { return 1.6e-2; }

// A random 4-bit weight in the op's layout, with its float32 dequantization (the oracle's).
template <typename T>
struct Weight {
  int64_t K = 0, N = 0, G = 32;
  ZeroPointKind zero_kind = ZeroPointKind::kNone;
  std::vector<uint8_t> codes;     // [K, ceil(N / 2)]
  std::vector<T> scales;          // [ceil(K / G), N]
  std::vector<uint8_t> zp_packed; // [ceil(K / G), ceil(N / 2)]
  std::vector<T> zp_typed;        // [ceil(K / G), N]
  std::vector<float> w;           // [K, N] dequantized, float32

  int64_t row_bytes() const { return (N + 1) / 2; }
  int64_t blocks() const { return (K + G - 1) / G; }
  int code(int64_t i, int64_t n) const { return (codes[i * row_bytes() + n / 2] >> (4 * (n % 2))) & 0xf; }
  float zero(int64_t q, int64_t n) const {
    if (zero_kind == ZeroPointKind::kPacked) return static_cast<float>((zp_packed[q * row_bytes() + n / 2] >> (4 * (n % 2))) & 0xf);
    if (zero_kind == ZeroPointKind::kTyped) return to_f(zp_typed[q * N + n]);
    return 8.0f;
  }
};

template <typename T>
Weight<T> random_weight(Rng& rng, int64_t K, int64_t N, int64_t G, ZeroPointKind zk, bool fill_w = true) {
  Weight<T> wt;
  wt.K = K;
  wt.N = N;
  wt.G = G;
  wt.zero_kind = zk;
  wt.codes.resize(static_cast<size_t>(K * wt.row_bytes()));
  for (auto& c : wt.codes) c = static_cast<uint8_t>(rng.next());
  const float sd = 0.15f / std::sqrt(static_cast<float>(std::max<int64_t>(K, 1)));
  wt.scales.resize(static_cast<size_t>(wt.blocks() * N));
  for (auto& s : wt.scales) s = from_f<T>(sd * (0.5f + rng.uniform()));
  if (zk == ZeroPointKind::kPacked) {
    wt.zp_packed.resize(static_cast<size_t>(wt.blocks() * wt.row_bytes()));
    for (auto& z : wt.zp_packed) z = static_cast<uint8_t>(rng.next());
  } else if (zk == ZeroPointKind::kTyped) {
    wt.zp_typed.resize(static_cast<size_t>(wt.blocks() * N));
    for (auto& z : wt.zp_typed) z = from_f<T>(4.0f + 8.0f * rng.uniform());
  }
  if (fill_w) {
    wt.w.resize(static_cast<size_t>(K * N));
    for (int64_t i = 0; i < K; ++i)
      for (int64_t n = 0; n < N; ++n) {
        const int64_t q = i / G;
        wt.w[i * N + n] = (static_cast<float>(wt.code(i, n)) - wt.zero(q, n)) * to_f(wt.scales[q * N + n]);
      }
  }
  return wt;
}

// ---------------------------------------------------------------------------------
// check

struct CheckCase {
  int64_t M, K, N, G;
  ZeroPointKind zero_kind;
  Gating gating;
  float sparsity;
  bool bias;
  int special;        // 0 random, 1 ties (few magnitudes), 2 NaN in x, 3 NaN threshold / k < 0
  int col_threads;    // 8, 16, 32, 64
  int blocks_per_sm;  // plan sizing
  bool cluster;       // cluster plan allowed
};

int g_ring_cases = 0;  // cases that ran the ring kernel

template <typename T>
bool run_check(const CheckCase& c, cudaStream_t stream, const wina::cuda::DeviceInfo& dev, uint64_t seed,
               int* skipped) {
  Rng rng(seed);
  const int64_t M = c.M, K = c.K, N = c.N;
  const Weight<T> wt = random_weight<T>(rng, K, N, c.G, c.zero_kind);
  std::vector<T> hx(static_cast<size_t>(M * K)), hbias(static_cast<size_t>(N));
  std::vector<float> fx(hx.size()), scale(static_cast<size_t>(K));
  random_x(rng, c.special, hx, fx);
  for (auto& b : hbias) b = from_f<T>(rng.normal());
  random_score_scale(rng, c.special, scale);

  float threshold;
  int64_t k;
  case_gate(fx, scale, M, K, c.gating, c.sparsity, c.special, &threshold, &k);
  std::vector<uint32_t> keys;
  std::vector<int32_t> cuts;
  const std::vector<char> keep = host_keep(fx, scale, M, K, c.gating, threshold, k, &keys, &cuts);

  std::vector<double> ref(static_cast<size_t>(M * N), 0.0);
  double ref_scale = 1e-3;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double acc = 0.0;
      for (int64_t i = 0; i < K; ++i)
        if (keep[m * K + i]) acc += static_cast<double>(fx[m * K + i]) * wt.w[i * N + n];
      if (c.bias) acc += to_f(hbias[n]);
      ref[m * N + n] = acc;
      if (std::isfinite(acc)) ref_scale = std::max(ref_scale, std::fabs(acc));
    }

  DeviceBuffers buf;
  NbitsProblem p;
  p.x = buf.upload(hx);
  p.b = buf.upload(wt.codes);
  p.scales = buf.upload(wt.scales);
  p.zero_kind = c.zero_kind;
  p.zero_points = c.zero_kind == ZeroPointKind::kPacked  ? static_cast<const void*>(buf.upload(wt.zp_packed))
                  : c.zero_kind == ZeroPointKind::kTyped ? static_cast<const void*>(buf.upload(wt.zp_typed))
                                                         : nullptr;
  p.score_scale = buf.upload(scale);
  p.bias = c.bias ? buf.upload(hbias) : nullptr;
  T* dy = static_cast<T*>(buf.alloc(static_cast<size_t>(M * N) * sizeof(T)));
  p.y = dy;
  p.M = M;
  p.K = K;
  p.N = N;
  p.block_size = c.G;
  p.gating = c.gating;
  NbitsGate gate;
  gate.threshold = buf.upload(std::vector<float>{threshold});
  gate.keys = keys.empty() ? nullptr : buf.upload(keys);
  gate.cuts = cuts.empty() ? nullptr : buf.upload(cuts);
  CHECK(cudaMemset(dy, 0xff, std::max<size_t>(static_cast<size_t>(M * N) * sizeof(T), 1)));  // NaN in every type

  // The ring kernel where it applies for three seeds of four, the other kernel otherwise.
  NbitsPlan plan = wina::cuda::MakeNbitsPlan<T>(p, dev, c.blocks_per_sm, c.col_threads, c.cluster, seed % 4 != 0);
  plan.stages = 2 + static_cast<int>(seed % 3);           // 2, 3, 4 batches in flight (2 for two tokens)
  plan.prefetch_rows = (seed / 3) % 2 == 0 ? 0 : 24;      // the L2 prefetch while gating
  plan.max_carveout = (seed / 6) % 2 == 1;
  if (plan.ring_tile > 0) plan.ring_slots = (seed / 4) % 2 == 0 ? 8 : 16;  // rows in flight a thread
  if (M > 0 && K > 0 && N > 0 && !plan.decode) {
    ++*skipped;
    return true;
  }
  if (plan.ring_tile > 0) ++g_ring_cases;
  const size_t ws_bytes = wina::cuda::NbitsDecodeWorkspaceBytes<T>(p, plan);
  void* ws = buf.alloc(ws_bytes);
  CHECK(cudaMemset(ws, 0x5a, ws_bytes ? ws_bytes : 1));  // a workspace as ORT may hand it out
  const cudaError_t launch_err = wina::cuda::LaunchNbitsDecode<T>(p, plan, gate, ws, wina::cuda::Stream(stream));
  if (launch_err != cudaSuccess) {
    std::printf("FAIL %s M=%lld K=%lld N=%lld ct=%d splits=%lld cluster=%d ring=%d/%lld/%d/%d: launch error %s\n",
                type_name<T>(), (long long)M, (long long)K, (long long)N, plan.col_threads, (long long)plan.splits,
                plan.cluster, plan.ring_tile, (long long)plan.ring_rows, plan.ring_splits, plan.ring_slots,
                cudaGetErrorString(launch_err));
    cudaGetLastError();
    return false;
  }
  CHECK(cudaStreamSynchronize(stream));
  CHECK(cudaGetLastError());
  std::vector<T> hy(static_cast<size_t>(M * N));
  if (!hy.empty()) CHECK(cudaMemcpy(hy.data(), dy, hy.size() * sizeof(T), cudaMemcpyDeviceToHost));
  // Again on the same workspace: bit-equal.
  CHECK(wina::cuda::LaunchNbitsDecode<T>(p, plan, gate, ws, wina::cuda::Stream(stream)));
  CHECK(cudaStreamSynchronize(stream));
  std::vector<T> hy2(hy.size());
  if (!hy2.empty()) CHECK(cudaMemcpy(hy2.data(), dy, hy2.size() * sizeof(T), cudaMemcpyDeviceToHost));
  const bool repeat_ok = hy.empty() || std::memcmp(hy.data(), hy2.data(), hy.size() * sizeof(T)) == 0;

  double worst = 0.0;
  bool ok = repeat_ok;
  for (size_t i = 0; i < hy.size(); ++i) {
    const float got = to_f(hy[i]);
    const double want = ref[i];
    if (std::isnan(want) || std::isnan(got)) {
      if (std::isnan(want) != std::isnan(got)) ok = false;
      continue;
    }
    if (std::isinf(want) || std::isinf(got)) {
      if (want != got) ok = false;
      continue;
    }
    worst = std::max(worst, std::fabs(got - want) / ref_scale);
  }
  ok = ok && worst <= tolerance<T>();
  if (!ok) {
    std::printf("FAIL %s M=%lld K=%lld N=%lld G=%lld zp=%d %s s=%.2f bias=%d special=%d ct=%d bpsm=%d cluster=%d "
                "(plan: splits=%lld rows=%lld cluster=%d ring=%d/%lld/%d/%d): max error %.3g of scale %.3g%s\n",
                type_name<T>(), (long long)M, (long long)K, (long long)N, (long long)c.G, static_cast<int>(c.zero_kind),
                c.gating == Gating::kTopK ? "topk" : "threshold", c.sparsity, c.bias, c.special, c.col_threads,
                c.blocks_per_sm, c.cluster, (long long)plan.splits, (long long)plan.rows_per_split, plan.cluster,
                plan.ring_tile, (long long)plan.ring_rows, plan.ring_splits, plan.ring_slots, worst,
                ref_scale, repeat_ok ? "" : ", repeated call not bit-equal");
  }
  return ok;
}

using wina::cuda::DequantKernel;
constexpr DequantKernel kDequantKernels[] = {DequantKernel::kAuto, DequantKernel::kBytewise,
                                             DequantKernel::kCols16Rows8, DequantKernel::kCols8Rows8,
                                             DequantKernel::kCols8Rows16, DequantKernel::kCols16Rows16};

const char* dequant_name(DequantKernel kernel) {
  switch (kernel) {
    case DequantKernel::kAuto: return "auto";
    case DequantKernel::kBytewise: return "bytewise";
    case DequantKernel::kCols16Rows8: return "16x8";
    case DequantKernel::kCols8Rows8: return "8x8";
    case DequantKernel::kCols8Rows16: return "8x16";
    case DequantKernel::kCols16Rows16: return "16x16";
  }
  return "?";
}

// The dequantization kernels against the host: bit for bit (the same float32 arithmetic, one rounding).
template <typename T>
bool run_dequantize_check(int64_t K, int64_t N, int64_t G, ZeroPointKind zk, cudaStream_t stream, uint64_t seed) {
  Rng rng(seed);
  const Weight<T> wt = random_weight<T>(rng, K, N, G, zk);
  DeviceBuffers buf;
  NbitsProblem p;
  p.b = buf.upload(wt.codes);
  p.scales = buf.upload(wt.scales);
  p.zero_kind = zk;
  p.zero_points = zk == ZeroPointKind::kPacked  ? static_cast<const void*>(buf.upload(wt.zp_packed))
                  : zk == ZeroPointKind::kTyped ? static_cast<const void*>(buf.upload(wt.zp_typed))
                                                : nullptr;
  p.K = K;
  p.N = N;
  p.M = 64;
  p.block_size = G;
  T* dw = static_cast<T*>(buf.alloc(static_cast<size_t>(K * N) * sizeof(T)));
  std::vector<T> hw(static_cast<size_t>(K * N));
  for (const DequantKernel kernel : kDequantKernels) {  // each kernel (vectorized ones where N allows)
    CHECK(cudaMemset(dw, 0xff, hw.size() * sizeof(T)));
    CHECK(wina::cuda::LaunchNbitsDequantize<T>(p, dw, wina::cuda::Stream(stream), kernel));
    CHECK(cudaStreamSynchronize(stream));
    if (!hw.empty()) CHECK(cudaMemcpy(hw.data(), dw, hw.size() * sizeof(T), cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < hw.size(); ++i) {
      const T want = from_f<T>(wt.w[i]);
      if (std::memcmp(&want, &hw[i], sizeof(T)) != 0) {
        std::printf("FAIL dequantize %s K=%lld N=%lld G=%lld zp=%d kernel %s at %zu: %g vs %g\n", type_name<T>(),
                    (long long)K, (long long)N, (long long)G, static_cast<int>(zk), dequant_name(kernel), i,
                    to_f(hw[i]), to_f(want));
        return false;
      }
    }
  }
  return true;
}

int check_all(bool quick) {
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const wina::cuda::DeviceInfo dev = device_info();
  // (K, N): odd N (a half-used last byte), N not a multiple of 32 (byte loads), K off the slab
  // and block sizes, one row, and shapes that need several tiles and slabs.
  const int64_t shapes[][2] = {{1, 1},     {17, 3},     {64, 77},    {96, 64},     {300, 1000}, {1000, 576},
                               {640, 4096}, {2048, 512}, {5000, 264}, {4096, 2048}, {1536, 4128}};
  const int64_t blocks[] = {16, 32, 64, 128, 256};
  const float sparsities[] = {0.0f, 0.5f, 0.9f};
  const int cts[] = {8, 16, 32, 64};
  int total = 0, failed = 0, skipped = 0;
  g_ring_cases = 0;
  uint64_t seed = 1;
  Rng pick(12345);
  const int per_shape = quick ? 6 : 40;
  for (const auto& shape : shapes) {
    for (int rep = 0; rep < per_shape; ++rep) {
      CheckCase c;
      c.K = shape[0];
      c.N = shape[1];
      c.M = 1 + pick.below(2);
      c.G = blocks[pick.below(5)];
      c.zero_kind = static_cast<ZeroPointKind>(pick.below(3));
      c.gating = pick.below(2) ? Gating::kTopK : Gating::kThreshold;
      c.sparsity = sparsities[pick.below(3)];
      c.bias = pick.below(2) != 0;
      c.special = pick.below(6) < 4 ? 0 : 1 + pick.below(3);
      c.col_threads = cts[pick.below(4)];
      c.blocks_per_sm = 1 + pick.below(4);
      c.cluster = pick.below(2) != 0;
      const int type = pick.below(3);
      bool ok = true;
      if (type == 0) ok = run_check<float>(c, stream, dev, seed++, &skipped);
      if (type == 1) ok = run_check<__half>(c, stream, dev, seed++, &skipped);
      if (type == 2) ok = run_check<__nv_bfloat16>(c, stream, dev, seed++, &skipped);
      ++total;
      failed += ok ? 0 : 1;
    }
  }
  // Empty problems: no tokens, no columns; K = 0 writes the bias.
  for (const auto& mkn : {std::vector<int64_t>{0, 64, 64}, std::vector<int64_t>{1, 64, 0}, std::vector<int64_t>{2, 0, 40}}) {
    CheckCase c{mkn[0], mkn[1], mkn[2], 32, ZeroPointKind::kNone, Gating::kThreshold, 0.5f, true, 0, 8, 2, true};
    failed += run_check<__half>(c, stream, dev, seed++, &skipped) ? 0 : 1;
    ++total;
  }
  // The Llama shapes' plans (MakeNbitsPlan's own choice), one token, each dtype, with zero points.
  for (const auto& shape : {std::vector<int64_t>{4096, 4096}, std::vector<int64_t>{14336, 4096},
                            std::vector<int64_t>{4096, 14336}}) {
    for (int zk = 0; zk < 3; ++zk) {
      CheckCase c{1, shape[0], shape[1], 32, static_cast<ZeroPointKind>(zk), Gating::kThreshold, 0.5f, false, 0, 8, 0,
                  true};
      failed += run_check<__half>(c, stream, dev, seed++, &skipped) ? 0 : 1;
      ++total;
      if (quick) break;
    }
  }
  int deq = 0, deq_failed = 0;
  for (int64_t G : {16, 32, 128}) {
    for (int zk = 0; zk < 3; ++zk) {
      deq_failed += run_dequantize_check<float>(100, 77, G, static_cast<ZeroPointKind>(zk), stream, seed++) ? 0 : 1;
      deq_failed += run_dequantize_check<__half>(257, 640, G, static_cast<ZeroPointKind>(zk), stream, seed++) ? 0 : 1;
      deq_failed += run_dequantize_check<__nv_bfloat16>(64, 33, G, static_cast<ZeroPointKind>(zk), stream, seed++) ? 0 : 1;
      // N a multiple of 16 (the vectorized kernel), K off the 8-row groups
      deq_failed += run_dequantize_check<float>(100, 96, G, static_cast<ZeroPointKind>(zk), stream, seed++) ? 0 : 1;
      deq_failed += run_dequantize_check<__nv_bfloat16>(203, 4112, G, static_cast<ZeroPointKind>(zk), stream, seed++) ? 0 : 1;
      deq += 5;  // cases, each through every kernel
    }
  }
  CHECK(cudaStreamDestroy(stream));
  std::printf("check: %d cases (%d through the ring kernel), %d failed (%d prefill-only, not run here); dequantize: "
              "%d cases, %d failed\n", total, g_ring_cases, failed, skipped, deq, deq_failed);
  return failed + deq_failed == 0 ? 0 : 1;
}

// ---------------------------------------------------------------------------------
// bench

std::vector<int> env_ints(const char* name, std::vector<int> fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  std::vector<int> out;
  for (const char* s = v; *s;) {
    char* end = nullptr;
    out.push_back(static_cast<int>(std::strtol(s, &end, 10)));
    if (end == s) break;
    s = *end == ',' ? end + 1 : end;
  }
  return out.empty() ? fallback : out;
}

// Sum of 16-byte words, one partial per block: a plain streaming read.
__global__ void read_kernel(const uint4* __restrict__ p, size_t n, unsigned* out) {
  unsigned acc = 0;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const uint4 v = p[i];
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x12345678u) out[blockIdx.x] = acc;  // keeps the loads; practically never written
}

// The floor of a call: reads words [0, n1) of a and [0, n2) of b (the kept rows' codes and the
// block scales, as many bytes as a call reads), nothing else.
__global__ void floor_kernel(const uint4* __restrict__ a, size_t n1, const uint4* __restrict__ b, size_t n2,
                             unsigned* out) {
  unsigned acc = 0;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n1 + n2;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const uint4 v = i < n1 ? a[i] : b[i - n1];
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x12345678u) out[blockIdx.x] = acc;
}

// The floor of the row pattern: block (tile, slab) reads bytes [tile W, tile W + W) of each kept
// row of its slab (kept: a sorted row list; slab s holds list entries [s per, s per + per)),
// 16 bytes a thread, 4 rows in flight a thread; no arithmetic, no gating.
__global__ void gather_floor_kernel(const uint8_t* __restrict__ b, int64_t row_bytes, const int* __restrict__ kept,
                                    int count, int per_slab, int W, unsigned* out) {
  const int tpr = W / 16;                  // threads a row
  const int groups = blockDim.x / tpr;     // rows at a time
  const int g = threadIdx.x / tpr;
  const int t = threadIdx.x % tpr;
  const int64_t byte = static_cast<int64_t>(blockIdx.x) * W + t * 16;
  const int j0 = blockIdx.y * per_slab;
  const int j1 = min(j0 + per_slab, count);
  unsigned acc = 0;
  if (byte + 16 <= row_bytes) {
    for (int j = j0 + g; j < j1; j += 4 * groups) {
      uint4 v[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int jj = j + u * groups;
        v[u] = jj < j1 ? *reinterpret_cast<const uint4*>(b + static_cast<int64_t>(kept[jj]) * row_bytes + byte)
                       : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
  }
  if (acc == 0x12345678u) out[blockIdx.x] = acc;
}

// Captures launch(c) for c = 0 .. chain - 1 into one graph and times it (replay_median_us).
template <typename Launch>
double time_chain(cudaStream_t stream, int chain, int replays, Launch&& launch) {
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  for (int c = 0; c < chain; ++c) launch(c);
  CHECK(cudaStreamEndCapture(stream, &graph));
  CHECK(cudaGraphInstantiate(&exec, graph, 0));
  const double us = replay_median_us(stream, exec, chain, replays);
  CHECK(cudaGraphExecDestroy(exec));
  CHECK(cudaGraphDestroy(graph));
  return us;
}

// Median µs a call of a CUDA graph of `chain` gather_floor_kernel launches (tile W, `slabs` slabs).
double time_gather_floor(cudaStream_t stream, const std::vector<NbitsProblem>& probs, int64_t row_bytes,
                         const int* kept, int count, int W, int slabs, int chain, int replays, unsigned* out) {
  int per = (count + slabs - 1) / slabs;
  return time_chain(stream, chain, replays, [&](int c) {
    const uint8_t* b = probs[c % probs.size()].b;
    void* kargs[] = {&b, &row_bytes, &kept, &count, &per, &W, &out};
    const dim3 grid(static_cast<unsigned>((row_bytes + W - 1) / W), static_cast<unsigned>(slabs));
    CHECK(cudaLaunchKernel(reinterpret_cast<const void*>(gather_floor_kernel), grid, dim3(256), kargs, 0, stream));
  });
}

// Median µs a call of a CUDA graph of `chain` floor_kernel launches over the weight copies.
double time_floor(cudaStream_t stream, const std::vector<NbitsProblem>& probs, size_t code_bytes, size_t scale_bytes,
                  int chain, int replays, int sm_count, unsigned* out) {
  return time_chain(stream, chain, replays, [&](int c) {
    const uint4* a = reinterpret_cast<const uint4*>(probs[c % probs.size()].b);
    const uint4* b = static_cast<const uint4*>(probs[c % probs.size()].scales);
    size_t n1 = code_bytes / 16, n2 = scale_bytes / 16;
    void* kargs[] = {&a, &n1, &b, &n2, &out};
    CHECK(cudaLaunchKernel(reinterpret_cast<const void*>(floor_kernel), dim3(sm_count * 4), dim3(512), kargs, 0,
                           stream));
  });
}

// Read bandwidth of the GPU: 2 GiB read by read_kernel, median of 20, GB/s.
double measure_read_gbs(cudaStream_t stream, int sm_count) {
  const size_t bytes = size_t{2} << 30;
  DeviceBuffers buf;
  uint4* d = static_cast<uint4*>(buf.alloc(bytes));
  unsigned* out = static_cast<unsigned*>(buf.alloc(4096 * 4));
  CHECK(cudaMemset(d, 1, bytes));
  cudaEvent_t e0, e1;
  CHECK(cudaEventCreate(&e0));
  CHECK(cudaEventCreate(&e1));
  std::vector<double> times;
  size_t n = bytes / 16;
  void* kargs[] = {&d, &n, &out};
  for (int r = 0; r < 23; ++r) {
    CHECK(cudaEventRecord(e0, stream));
    CHECK(cudaLaunchKernel(reinterpret_cast<const void*>(read_kernel), dim3(sm_count * 8), dim3(512), kargs, 0, stream));
    CHECK(cudaEventRecord(e1, stream));
    CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, e0, e1));
    if (r >= 3) times.push_back(ms * 1e-3);
  }
  CHECK(cudaEventDestroy(e0));
  CHECK(cudaEventDestroy(e1));
  return static_cast<double>(bytes) / median(times) / 1e9;
}

// WINA_NB_DEQ=1: the prefill path's dequantization instead, float16, block 32, no zero points; every
// kernel (columns x rows a thread for the vectorized ones) on the projections of a Llama-3-8B layer (K x N): a graph of 8 calls on rotating weights
// and outputs (past the L2), median µs a call; GB/s of the bytes written and read.
int bench_dequantize(cudaStream_t stream, double peak) {
  const int64_t shapes[][2] = {{4096, 6144}, {4096, 4096}, {4096, 14336}, {14336, 4096}};
  constexpr int kChain = 8;
  std::printf("shape        kernel       us/call   MB moved      GB/s  %%peak\n");
  for (const auto& shape : shapes) {
    const int64_t K = shape[0], N = shape[1], G = 32;
    Rng rng(7);
    const Weight<__half> wt = random_weight<__half>(rng, K, N, G, ZeroPointKind::kNone, false);
    DeviceBuffers buf;
    std::vector<NbitsProblem> ps(kChain);
    std::vector<__half*> outs(kChain);
    for (int c = 0; c < kChain; ++c) {
      ps[c].b = buf.upload(wt.codes);
      ps[c].scales = buf.upload(wt.scales);
      ps[c].K = K;
      ps[c].N = N;
      ps[c].M = 64;
      ps[c].block_size = G;
      outs[c] = static_cast<__half*>(buf.alloc(static_cast<size_t>(K * N) * sizeof(__half)));
    }
    const double bytes = static_cast<double>(K * N) * 2 + static_cast<double>(K * wt.row_bytes()) +
                         static_cast<double>(wt.scales.size()) * 2;
    for (const DequantKernel kernel : kDequantKernels) {
      cudaGraph_t graph;
      cudaGraphExec_t exec;
      CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
      for (int c = 0; c < kChain; ++c)
        CHECK(wina::cuda::LaunchNbitsDequantize<__half>(ps[c], outs[c], wina::cuda::Stream(stream), kernel));
      CHECK(cudaStreamEndCapture(stream, &graph));
      CHECK(cudaGraphInstantiate(&exec, graph, 0));
      const double us = replay_median_us(stream, exec, kChain, 20);
      std::printf("%5lldx%-6lld %-10s %9.2f %10.2f %9.0f %6.1f\n", (long long)K, (long long)N,
                  dequant_name(kernel), us, bytes / 1e6, bytes / us / 1e3, 100.0 * bytes / us / 1e3 / peak);
      CHECK(cudaGraphExecDestroy(exec));
      CHECK(cudaGraphDestroy(graph));
    }
  }
  return 0;
}

int bench_all(bool quick) {
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const wina::cuda::DeviceInfo dev = device_info();
  const cudaDeviceProp prop = device_props();
  const double peak = measure_read_gbs(stream, prop.multiProcessorCount);
  print_device(prop);
  std::printf("read bandwidth: %.0f GB/s (2 GiB streaming read, median of 20)\n", peak);
  if (env_ints("WINA_NB_DEQ", {0})[0] == 1) {
    const int status = bench_dequantize(stream, peak);
    CHECK(cudaStreamDestroy(stream));
    return status;
  }
  std::printf("bytes read: kept rows' codes + every block's scales (+ zero points); GB/s against that\n");
  const int64_t all_shapes[][2] = {{4096, 4096}, {4096, 14336}, {14336, 4096}};
  const float all_sparsities[] = {0.0f, 0.25f, 0.4f, 0.5f, 0.65f};
  // WINA_NB_SHAPES, WINA_NB_SPARSITIES: indices into the two lists above (default all).
  std::vector<std::vector<int64_t>> shapes;
  for (int i : env_ints("WINA_NB_SHAPES", {0, 1, 2})) shapes.push_back({all_shapes[i][0], all_shapes[i][1]});
  std::vector<float> sparsities;
  for (int i : env_ints("WINA_NB_SPARSITIES", {0, 1, 2, 3, 4})) sparsities.push_back(all_sparsities[i]);
  const int chain = 32;
  const int replays = quick ? 10 : 30;
  // WINA_NB_G (block size), WINA_NB_ZP (0 none, 1 uint8, 2 typed), WINA_NB_CT (column threads),
  // WINA_NB_CLUSTER (1 cluster plans allowed, 0 split-K only),
  // WINA_NB_BPSM (blocks per SM; 0 = default), WINA_NB_PDLFIRST (-1 the plan's, 0, 1),
  // WINA_NB_MODES ("threshold,topk"; top-k times the decode kernel only: the rule is computed on
  // the host, the float op's select kernel is not part of this tool).
  const int64_t G = env_ints("WINA_NB_G", {32})[0];
  const auto zk = static_cast<ZeroPointKind>(env_ints("WINA_NB_ZP", {0})[0]);
  const std::vector<int> cts = env_ints("WINA_NB_CT", {8, 16, 32, 64});
  const std::vector<int> clusters = env_ints("WINA_NB_CLUSTER", {1, 0});
  const std::vector<int> bpsms = env_ints("WINA_NB_BPSM", {0});
  const std::vector<int> pdl_firsts = env_ints("WINA_NB_PDLFIRST", {-1});
  // WINA_NB_STAGES (batches in flight), WINA_NB_PREFETCH (rows prefetched while gating),
  // WINA_NB_PROBE (timing only: 1 no arithmetic in the product, 2 no product), WINA_NB_CARVEOUT
  // (1: the largest shared-memory carveout for the decode and reduction kernels).
  const std::vector<int> stage_list = env_ints("WINA_NB_STAGES", {3});
  const std::vector<int> prefetches = env_ints("WINA_NB_PREFETCH", {0});
  const std::vector<int> probes = env_ints("WINA_NB_PROBE", {0});
  const std::vector<int> carveouts = env_ints("WINA_NB_CARVEOUT", {0});
  // WINA_NB_RING (1: the ring kernel where it applies, 0: the other), WINA_NB_SLOTS (its ring
  // slots; 0 = the plan's), WINA_NB_FLOOR (1: also time a plain read of the same bytes, the
  // same way: the floor of a call that streams them).
  const std::vector<int> bulks = env_ints("WINA_NB_RING", {1});
  const std::vector<int> slot_list = env_ints("WINA_NB_SLOTS", {0});
  const bool floor_rows = env_ints("WINA_NB_FLOOR", {0})[0] != 0;
  const char* modes_env = std::getenv("WINA_NB_MODES");
  const std::string modes = modes_env != nullptr ? modes_env : "threshold";
  std::printf("block size %lld, zero points %d\n", (long long)G, static_cast<int>(zk));
  std::printf("%-12s %-9s %5s %4s %3s %4s %3s %5s %5s %3s %3s %3s %3s %9s %9s %9s %6s %7s\n", "shape", "gating", "s",
              "kern", "ct", "bpsm", "cl", "split", "rows", "pf", "stg", "pre", "prb/co", "us/call", "MB read", "GB/s",
              "%peak", "kept");
  std::printf("(kern ring: ct = tile bytes / 8, cl = split = cluster size, stg = ring slots of 8 KiB)\n");
  for (const auto& shape : shapes) {
    const int64_t K = shape[0], N = shape[1];
    Rng rng(K * 31 + N);
    const Weight<__half> wt = random_weight<__half>(rng, K, N, G, zk, false);
    const size_t code_bytes = wt.codes.size(), scale_bytes = wt.scales.size() * 2;
    const size_t zero_bytes = zk == ZeroPointKind::kPacked ? wt.zp_packed.size() : wt.zp_typed.size() * 2;
    const size_t copy_bytes = code_bytes + scale_bytes + zero_bytes;
    const int copies = static_cast<int>(std::max<size_t>(2, (512ull << 20) / copy_bytes + 1));
    DeviceBuffers buf;
    std::vector<NbitsProblem> probs(static_cast<size_t>(copies));
    for (int c = 0; c < copies; ++c) {
      probs[c].b = buf.upload(wt.codes);
      probs[c].scales = buf.upload(wt.scales);
      probs[c].zero_kind = zk;
      probs[c].zero_points = zk == ZeroPointKind::kPacked  ? static_cast<const void*>(buf.upload(wt.zp_packed))
                             : zk == ZeroPointKind::kTyped ? static_cast<const void*>(buf.upload(wt.zp_typed))
                                                           : nullptr;
    }
    std::vector<__half> hx;
    std::vector<float> fx, scale;
    random_token(rng, K, hx, fx, scale);
    const __half* dx = buf.upload(hx);
    const float* dscale = buf.upload(scale);
    __half* dy = static_cast<__half*>(buf.alloc(N * sizeof(__half) * chain));
    float* dthr = static_cast<float*>(buf.alloc(sizeof(float)));
    uint32_t* dkeys = static_cast<uint32_t*>(buf.alloc(4));
    int32_t* dcuts = static_cast<int32_t*>(buf.alloc(4));
    const std::vector<float> sorted = sorted_scores(fx, scale);

    for (float s : sparsities) {
      const float thr = s <= 0.0f ? -1.0f : sorted[static_cast<size_t>(s * K)];
      const int64_t kk = K - static_cast<int64_t>(std::lround(s * K));
      std::vector<uint32_t> keys;
      std::vector<int32_t> cuts;
      host_keep(fx, scale, 1, K, Gating::kTopK, 0.0f, kk, &keys, &cuts);
      CHECK(cudaMemcpy(dthr, &thr, 4, cudaMemcpyHostToDevice));
      CHECK(cudaMemcpy(dkeys, keys.data(), 4, cudaMemcpyHostToDevice));
      CHECK(cudaMemcpy(dcuts, cuts.data(), 4, cudaMemcpyHostToDevice));
      int64_t kept_thr = 0;
      for (int64_t i = 0; i < K; ++i) kept_thr += host_score(fx[i], scale[i]) > thr;
      if (floor_rows) {
        const size_t kept_bytes = static_cast<size_t>(kept_thr) * static_cast<size_t>(wt.row_bytes());
        unsigned* out = static_cast<unsigned*>(buf.alloc(4096 * 4));
        const double us = time_floor(stream, probs, kept_bytes, scale_bytes, chain, replays, prop.multiProcessorCount,
                                     out);
        const double bytes = static_cast<double>(kept_bytes + scale_bytes);
        std::printf("%lldx%lld    floor     %5.2f  (a plain read of the same bytes, graph of %d)        %9.2f %9.2f %9.0f "
                    "%6.1f %7lld\n", (long long)K, (long long)N, s, chain, us, bytes / 1e6, bytes / us / 1e3,
                    100.0 * bytes / us / 1e3 / peak, (long long)kept_thr);
        // The kept rows' codes alone in the kernels' pattern: W bytes of a row a block, slabs of K.
        std::vector<int> kept_rows;
        for (int64_t i = 0; i < K; ++i)
          if (host_score(fx[i], scale[i]) > thr) kept_rows.push_back(static_cast<int>(i));
        const int* dkept = buf.upload(kept_rows);
        for (int W : env_ints("WINA_NB_GATHER_W", {128, 512, 2048})) {
          for (int slabs : env_ints("WINA_NB_GATHER_SLABS", {8, 32})) {
            if (W > wt.row_bytes()) continue;
            const double gus = time_gather_floor(stream, probs, wt.row_bytes(), dkept, static_cast<int>(kept_rows.size()),
                                                 W, slabs, chain, replays, out);
            const double gbytes = static_cast<double>(kept_bytes);
            std::printf("%lldx%lld    gather    %5.2f  W=%-4d slabs=%-3d blocks=%-5lld (codes only)           %9.2f %9.2f "
                        "%9.0f %6.1f %7lld\n", (long long)K, (long long)N, s, W, slabs,
                        (long long)((wt.row_bytes() + W - 1) / W * slabs), gus, gbytes / 1e6, gbytes / gus / 1e3,
                        100.0 * gbytes / gus / 1e3 / peak, (long long)kept_thr);
          }
        }
      }
      for (Gating gating : {Gating::kThreshold, Gating::kTopK}) {
        if (modes.find(gating == Gating::kTopK ? "topk" : "threshold") == std::string::npos) continue;
        const int64_t kept = gating == Gating::kTopK ? kk : kept_thr;
        for (int ct : cts) {
          for (int cl : clusters) {
            for (int bpsm : bpsms) {
              for (int pf : pdl_firsts) {
               for (int stages : stage_list) {
                for (int prefetch : prefetches) {
                 for (int probe : probes) {
                  for (int carveout : carveouts) {
                   for (int bulk : bulks) {
                    for (int slots : slot_list) {
                if (quick && ct != cts[0]) continue;
                NbitsProblem p = probs[0];
                p.x = dx;
                p.score_scale = dscale;
                p.M = 1;
                p.K = K;
                p.N = N;
                p.block_size = G;
                p.gating = gating;
                NbitsPlan plan = wina::cuda::MakeNbitsPlan<__half>(p, dev, bpsm, ct, cl != 0, bulk != 0);
                if (bulk != 0 && plan.ring_tile == 0) continue;  // not eligible: the other kernel's rows
                if (slots > 0 && plan.ring_tile > 0) plan.ring_slots = slots;
                if (pf >= 0) plan.pdl_first = plan.pdl && pf != 0;
                plan.stages = stages;
                plan.prefetch_rows = prefetch;
                plan.probe = probe;
                plan.max_carveout = carveout != 0;
                if (cl != 0 && plan.cluster == 0 && plan.ring_tile == 0) continue;  // the same plan as split-K
                NbitsGate gate{dthr, dkeys, dcuts};
                const size_t ws_bytes = wina::cuda::NbitsDecodeWorkspaceBytes<__half>(p, plan);
                void* ws[chain];
                for (int c = 0; c < chain; ++c) ws[c] = ws_bytes ? buf.alloc(ws_bytes) : nullptr;
                cudaGraph_t graph = nullptr;
                cudaGraphExec_t exec = nullptr;
                cudaError_t err = cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal);
                for (int c = 0; c < chain && err == cudaSuccess; ++c) {
                  NbitsProblem pc = p;
                  pc.b = probs[c % copies].b;
                  pc.scales = probs[c % copies].scales;
                  pc.zero_points = probs[c % copies].zero_points;
                  pc.y = dy + c * N;
                  err = wina::cuda::LaunchNbitsDecode<__half>(pc, plan, gate, ws[c], wina::cuda::Stream(stream));
                }
                const cudaError_t end = cudaStreamEndCapture(stream, &graph);
                if (err == cudaSuccess) err = end;
                if (err == cudaSuccess) err = cudaGraphInstantiate(&exec, graph, 0);
                if (err != cudaSuccess) {
                  std::printf("%lldx%lld ct=%d cluster=%d: graph capture failed: %s\n", (long long)K, (long long)N,
                              plan.col_threads, plan.cluster, cudaGetErrorString(err));
                  cudaGetLastError();
                  if (graph) cudaGraphDestroy(graph);
                  continue;
                }
                const double us = replay_median_us(stream, exec, chain, replays);
                CHECK(cudaGetLastError());
                const double bytes = static_cast<double>(kept) * static_cast<double>(wt.row_bytes()) +
                                     static_cast<double>(scale_bytes + zero_bytes);
                char shape_name[32];
                std::snprintf(shape_name, sizeof shape_name, "%lldx%lld", (long long)K, (long long)N);
                const bool bk = plan.ring_tile > 0;
                std::printf("%-12s %-9s %5.2f %4s %3d %4d %3d %5lld %5lld %3d %3d %3d %3d %9.2f %9.2f %9.0f %6.1f %7lld\n",
                            shape_name, gating == Gating::kTopK ? "topk" : "threshold", s, bk ? "ring" : "ksum",
                            bk ? plan.ring_tile / 8 : plan.col_threads, bpsm, bk ? plan.ring_splits : plan.cluster,
                            (long long)(bk ? plan.ring_splits : plan.splits),
                            (long long)(bk ? plan.ring_rows : plan.rows_per_split), plan.pdl_first ? 1 : 0,
                            bk ? plan.ring_slots : plan.stages, plan.prefetch_rows,
                            plan.probe * 10 + (plan.max_carveout ? 1 : 0), us, bytes / 1e6, bytes / us / 1e3,
                            100.0 * bytes / us / 1e3 / peak, (long long)kept);
                std::fflush(stdout);
                CHECK(cudaGraphExecDestroy(exec));
                CHECK(cudaGraphDestroy(graph));
                    }
                   }
                  }
                 }
                }
               }
              }
            }
          }
        }
      }
    }
  }
  CHECK(cudaStreamDestroy(stream));
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return wina_bench::tool_main(argc, argv, check_all, bench_all); }

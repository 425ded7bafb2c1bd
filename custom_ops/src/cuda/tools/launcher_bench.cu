// Stand-alone check and timing of the WinaSparseMatMul CUDA launchers, without ONNX Runtime.
//
// Built on demand (not part of the library): cmake --build <dir> --target wina_cuda_launcher_bench
//
//   wina_cuda_launcher_bench check [quick]  launchers against a host reference (the oracle's
//                                           rules: NaN scores = +inf, top-k ties to lower indices),
//                                           every dtype, decode and prefill paths, odd shapes, and
//                                           the grouped decode launcher (several weights, one X)
//   wina_cuda_launcher_bench bench [quick]  one token, float16, 4096x4096, 4096x14336, 14336x4096,
//                                           sparsity 0 / 0.5 / 0.65, threshold and top-k, over
//                                           several plans; each case is a CUDA graph of 32 calls on
//                                           rotating weight copies (>= 512 MiB, past the L2), timed
//                                           by events over its replays; median per call
//   wina_cuda_launcher_bench profile        one plain call per case (fp16, one token), for ncu
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

#include "cuda/launchers.cuh"
#include "cuda/tools/bench_common.cuh"

using wina::Gating;
using wina::cuda::Plan;
using wina::cuda::Problem;

namespace {

using namespace wina_bench;

// ---------------------------------------------------------------------------------
// check

// Turns a decode plan into a cluster plan of `cluster` slabs (sm_90, <= 2 tokens, 16-byte
// loads), the smallest of cluster, 2 x cluster, ... (up to 8) whose slabs fit; false if none.
bool try_cluster_plan(Plan& plan, int64_t M, int64_t K, int cluster, const wina::cuda::DeviceInfo& dev) {
  if (dev.cc_major < 9 || !plan.decode || !plan.vectorized || M > 2 || K <= 0) return false;
  for (int c = cluster; c <= 8; c *= 2) {
    const int64_t rows = ((K + c - 1) / c + 31) / 32 * 32;
    if (rows > wina::cuda::kMaxSlabRows || (K + rows - 1) / rows != c) continue;
    plan.cluster = c;
    plan.rows_per_split = rows;
    plan.splits = c;
    plan.pdl_first = plan.pdl;  // as MakePlan's cluster plans
    return true;
  }
  return false;
}

// v[i] = T(normal * sd) and f[i] = float(v[i]), the value the device sees.
template <typename T>
void random_fill(Rng& rng, float sd, std::vector<T>& v, std::vector<float>& f) {
  for (size_t i = 0; i < v.size(); ++i) {
    v[i] = from_f<T>(rng.normal() * sd);
    f[i] = to_f(v[i]);
  }
}

struct CheckCase {
  int64_t M, K, N;
  Gating gating;
  float sparsity;   // fraction masked (threshold from the score quantile; k = K - round(s K))
  bool bias;
  int special;      // 0 random, 1 ties (few magnitudes), 2 NaN in x, 3 threshold NaN / k < 0
};

template <typename T>
bool run_check(const CheckCase& c, cudaStream_t stream, const wina::cuda::DeviceInfo& dev, uint64_t seed) {
  Rng rng(seed);
  const int64_t M = c.M, K = c.K, N = c.N;
  std::vector<T> hx(static_cast<size_t>(M * K)), hb(static_cast<size_t>(K * N)), hbias(static_cast<size_t>(N));
  std::vector<float> fx(hx.size()), fb(hb.size()), fbias(hbias.size()), scale(static_cast<size_t>(K));
  random_x(rng, c.special, hx, fx);
  random_fill(rng, 1.0f / std::sqrt(static_cast<float>(std::max<int64_t>(K, 1))), hb, fb);
  random_fill(rng, 1.0f, hbias, fbias);
  random_score_scale(rng, c.special, scale);

  float threshold;
  int64_t k;
  case_gate(fx, scale, M, K, c.gating, c.sparsity, c.special, &threshold, &k);

  const std::vector<char> keep = host_keep(fx, scale, M, K, c.gating, threshold, k);
  std::vector<double> ref(static_cast<size_t>(M * N), 0.0);
  double ref_scale = 1e-3;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      double acc = 0.0;
      for (int64_t i = 0; i < K; ++i)
        if (keep[m * K + i]) acc += static_cast<double>(fx[m * K + i]) * fb[i * N + n];
      if (c.bias) acc += fbias[n];
      ref[m * N + n] = acc;
      if (std::isfinite(acc)) ref_scale = std::max(ref_scale, std::fabs(acc));
    }
  }

  DeviceBuffers buf;
  T* dx = static_cast<T*>(buf.alloc(hx.size() * sizeof(T)));
  T* db = static_cast<T*>(buf.alloc(hb.size() * sizeof(T)));
  T* dbias = static_cast<T*>(buf.alloc(hbias.size() * sizeof(T)));
  T* dy = static_cast<T*>(buf.alloc(static_cast<size_t>(M * N) * sizeof(T)));
  float* dscale = static_cast<float*>(buf.alloc(scale.size() * sizeof(float)));
  float* dthr = static_cast<float*>(buf.alloc(sizeof(float)));
  int64_t* dk = static_cast<int64_t*>(buf.alloc(sizeof(int64_t)));
  CHECK(cudaMemcpy(dx, hx.data(), hx.size() * sizeof(T), cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(db, hb.data(), hb.size() * sizeof(T), cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(dbias, hbias.data(), hbias.size() * sizeof(T), cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(dscale, scale.data(), scale.size() * sizeof(float), cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(dthr, &threshold, sizeof(float), cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(dk, &k, sizeof(int64_t), cudaMemcpyHostToDevice));
  CHECK(cudaMemset(dy, 0xff, static_cast<size_t>(M * N) * sizeof(T)));  // poison: NaN in every type

  Problem p;
  p.x = dx;
  p.b = db;
  p.score_scale = dscale;
  p.threshold = dthr;
  p.k = dk;
  p.bias = c.bias ? dbias : nullptr;
  p.y = dy;
  p.M = M;
  p.K = K;
  p.N = N;
  p.gating = c.gating;
  wina::cuda::DeviceInfo dev_case = dev;
  if (seed % 3 == 2) dev_case.cc_major = 8;  // every third case: the plan of an sm_80 GPU (no PDL)
  Plan plan = wina::cuda::MakePlan<T>(p, dev_case, static_cast<int>(1 + seed % 8));
  plan.unroll = 4 << (seed % 3);      // 4, 8, 16 rows a batch (16: one token only)
  plan.stages = 1 + (seed / 3) % 2;   // 1 or 2 batches in flight (2: up to two tokens, 16-byte loads)
  if (seed % 2 == 1) try_cluster_plan(plan, M, K, 2 << ((seed / 2) % 3), dev_case);  // half the sm_90 cases
  plan.prefetch_rows = (seed / 5) % 2 == 0 ? 0 : 24;  // the L2 prefetch in every kind of slab
  const size_t ws_bytes = wina::cuda::WorkspaceBytes<T>(p, plan);
  void* ws = buf.alloc(ws_bytes);
  CHECK(cudaMemset(ws, 0x5a, ws_bytes ? ws_bytes : 1));  // a workspace as ORT may hand it out: not zero
  CHECK(wina::cuda::LaunchWinaSparseMatMul<T>(p, plan, ws, wina::cuda::Stream(stream)));
  CHECK(cudaStreamSynchronize(stream));
  std::vector<T> hy(static_cast<size_t>(M * N));
  CHECK(cudaMemcpy(hy.data(), dy, hy.size() * sizeof(T), cudaMemcpyDeviceToHost));
  // Twice more on the same workspace: bit-equal results.
  bool repeat_ok = true;
  for (int r = 0; r < 2; ++r) {
    CHECK(cudaMemset(dy, 0xff, static_cast<size_t>(M * N) * sizeof(T)));
    CHECK(wina::cuda::LaunchWinaSparseMatMul<T>(p, plan, ws, wina::cuda::Stream(stream)));
    CHECK(cudaStreamSynchronize(stream));
    std::vector<T> again(hy.size());
    CHECK(cudaMemcpy(again.data(), dy, again.size() * sizeof(T), cudaMemcpyDeviceToHost));
    if (std::memcmp(again.data(), hy.data(), hy.size() * sizeof(T)) != 0) repeat_ok = false;
  }

  const double tol = sizeof(T) == 4 ? 1e-4 : (std::strcmp(type_name<T>(), "float16") == 0 ? 4e-3 : 1.6e-2);
  double max_err = 0.0;
  int64_t bad = 0;
  for (size_t i = 0; i < hy.size(); ++i) {
    const double y = to_f(hy[i]);
    if (std::isnan(ref[i])) {
      if (!std::isnan(y)) ++bad;
      continue;
    }
    if (!std::isfinite(y)) {
      ++bad;
      continue;
    }
    const double e = std::fabs(y - ref[i]) / ref_scale;
    max_err = std::max(max_err, e);
    if (e > tol) ++bad;
  }
  const bool ok = bad == 0 && repeat_ok;
  if (!ok) {
    std::printf("FAIL %-8s M=%-3lld K=%-5lld N=%-5lld %-9s s=%.2f bias=%d special=%d plan(decode=%d rows=%lld vec=%d pdl=%d "
                "cluster=%d) max_rel_err=%.3g bad=%lld repeat_equal=%d\n",
                type_name<T>(), (long long)M, (long long)K, (long long)N,
                c.gating == Gating::kTopK ? "topk" : "threshold", c.sparsity, c.bias, c.special, plan.decode,
                (long long)plan.rows_per_split, plan.vectorized, plan.pdl, plan.cluster, max_err, (long long)bad,
                repeat_ok);
  }
  return ok;
}

// The grouped decode launcher (WinaSparseMatMulGroup, threshold gating): every weight
// against the host reference with its own scale and threshold, outputs poisoned first.
template <typename T>
bool run_group_check(int64_t M, int64_t K, const std::vector<int64_t>& Ns, bool bias, cudaStream_t stream,
                     const wina::cuda::DeviceInfo& dev, uint64_t seed) {
  Rng rng(seed);
  const int S = static_cast<int>(Ns.size());
  std::vector<T> hx(static_cast<size_t>(M * K));
  std::vector<float> fx(hx.size());
  for (size_t i = 0; i < hx.size(); ++i) {
    hx[i] = from_f<T>(rng.normal());
    fx[i] = to_f(hx[i]);
  }
  DeviceBuffers buf;
  T* dx = static_cast<T*>(buf.alloc(hx.size() * sizeof(T)));
  CHECK(cudaMemcpy(dx, hx.data(), hx.size() * sizeof(T), cudaMemcpyHostToDevice));
  wina::cuda::GroupProblem g;
  g.x = dx;
  g.M = M;
  g.K = K;
  g.count = S;
  std::vector<std::vector<double>> refs(S);
  std::vector<double> ref_scale(S, 1e-3);
  std::vector<T*> dys(S);
  for (int s = 0; s < S; ++s) {
    const int64_t N = Ns[s];
    std::vector<T> hb(static_cast<size_t>(K * N)), hbias(static_cast<size_t>(N));
    std::vector<float> fb(hb.size()), fbias(hbias.size()), scale(static_cast<size_t>(K));
    random_fill(rng, 1.0f / std::sqrt(static_cast<float>(std::max<int64_t>(K, 1))), hb, fb);
    random_fill(rng, 1.0f, hbias, fbias);
    for (int64_t i = 0; i < K; ++i) scale[i] = 0.5f + rng.uniform();
    // Each weight its own sparsity: 0, 0.3, 0.6, 0.9, ... of its own scores.
    std::vector<float> sc;
    for (int64_t m = 0; m < M; ++m)
      for (int64_t i = 0; i < K; ++i) sc.push_back(host_score(fx[m * K + i], scale[i]));
    std::sort(sc.begin(), sc.end());
    const float sparsity = 0.3f * static_cast<float>(s % 4);
    const float threshold = sparsity <= 0.0f ? -1.0f : sc[std::min(sc.size() - 1, static_cast<size_t>(sparsity * sc.size()))];
    const std::vector<char> keep = host_keep(fx, scale, M, K, Gating::kThreshold, threshold, 0);
    refs[s].assign(static_cast<size_t>(M * N), 0.0);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double acc = bias ? fbias[n] : 0.0;
        for (int64_t i = 0; i < K; ++i)
          if (keep[m * K + i]) acc += static_cast<double>(fx[m * K + i]) * fb[i * N + n];
        refs[s][m * N + n] = acc;
        ref_scale[s] = std::max(ref_scale[s], std::fabs(acc));
      }
    T* db = static_cast<T*>(buf.alloc(hb.size() * sizeof(T)));
    T* dbias = static_cast<T*>(buf.alloc(hbias.size() * sizeof(T)));
    float* dscale = static_cast<float*>(buf.alloc(scale.size() * sizeof(float)));
    float* dthr = static_cast<float*>(buf.alloc(sizeof(float)));
    dys[s] = static_cast<T*>(buf.alloc(static_cast<size_t>(M * N) * sizeof(T)));
    CHECK(cudaMemcpy(db, hb.data(), hb.size() * sizeof(T), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(dbias, hbias.data(), hbias.size() * sizeof(T), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(dscale, scale.data(), scale.size() * sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(dthr, &threshold, sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMemset(dys[s], 0xff, static_cast<size_t>(M * N) * sizeof(T)));  // poison: NaN in every type
    wina::cuda::Segment& w = g.segments[s];
    w.b = db;
    w.score_scale = dscale;
    w.threshold = dthr;
    w.bias = bias ? dbias : nullptr;
    w.y = dys[s];
    w.N = N;
  }
  Plan plan = wina::cuda::MakeGroupPlan<T>(g, dev, static_cast<int>(1 + seed % 4));
  plan.unroll = 4 << (seed % 2);
  plan.stages = 1 + (seed / 2) % 2;
  if (seed % 3 == 1) try_cluster_plan(plan, M, K, 2 << ((seed / 3) % 3), dev);
  plan.prefetch_rows = (seed / 5) % 2 == 0 ? 0 : 24;
  const size_t ws_bytes = wina::cuda::GroupWorkspaceBytes<T>(g, plan);
  void* ws = buf.alloc(ws_bytes);
  CHECK(cudaMemset(ws, 0x5a, ws_bytes ? ws_bytes : 1));
  CHECK(wina::cuda::LaunchWinaGroupDecode<T>(g, plan, ws, wina::cuda::Stream(stream)));
  CHECK(cudaStreamSynchronize(stream));
  const double tol = sizeof(T) == 4 ? 1e-4 : (std::strcmp(type_name<T>(), "float16") == 0 ? 4e-3 : 1.6e-2);
  bool ok = true;
  for (int s = 0; s < S; ++s) {
    const int64_t N = Ns[s];
    std::vector<T> hy(static_cast<size_t>(M * N));
    CHECK(cudaMemcpy(hy.data(), dys[s], hy.size() * sizeof(T), cudaMemcpyDeviceToHost));
    int64_t bad = 0;
    for (size_t i = 0; i < hy.size(); ++i) {
      const double y = to_f(hy[i]);
      if (!std::isfinite(y) || std::fabs(y - refs[s][i]) / ref_scale[s] > tol) ++bad;
    }
    if (bad) {
      std::printf("FAIL group %-8s M=%lld K=%lld weight %d of %d (N=%lld) bias=%d unroll=%d stages=%d cluster=%d: "
                  "%lld bad\n",
                  type_name<T>(), (long long)M, (long long)K, s, S, (long long)N, bias, plan.unroll, plan.stages,
                  plan.cluster, (long long)bad);
      ok = false;
    }
  }
  return ok;
}

int check_all(bool quick) {
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const wina::cuda::DeviceInfo dev = device_info();
  const std::vector<int64_t> Ms = quick ? std::vector<int64_t>{1, 3, 9} : std::vector<int64_t>{1, 2, 3, 5, 8, 9, 64};
  const std::vector<int64_t> Ks = quick ? std::vector<int64_t>{17, 1000} : std::vector<int64_t>{1, 17, 64, 192, 1000, 4096, 5000};
  const std::vector<int64_t> Ns = quick ? std::vector<int64_t>{3, 520} : std::vector<int64_t>{1, 3, 8, 77, 512, 1000, 2048};
  const float sparsities[] = {0.0f, 0.5f, 0.9f, 1.0f};
  int total = 0, failed = 0;
  uint64_t seed = 1;
  for (int t = 0; t < 3; ++t)
    for (int64_t M : Ms)
      for (int64_t K : Ks)
        for (int64_t N : Ns) {
          if (M * K * N > 600000000LL / 8) continue;  // keep the host reference quick
          for (int mi = 0; mi < 2; ++mi) {
            const Gating gating = mi ? Gating::kTopK : Gating::kThreshold;
            const float s = sparsities[(seed + mi) % 4];
            const int special = static_cast<int>((seed / 4) % 4);
            const CheckCase c{M, K, N, gating, s, (seed % 2) == 0, special};
            bool ok = t == 0 ? run_check<__half>(c, stream, dev, seed)
                             : (t == 1 ? run_check<__nv_bfloat16>(c, stream, dev, seed) : run_check<float>(c, stream, dev, seed));
            ++total;
            failed += ok ? 0 : 1;
            ++seed;
          }
        }
  // Many tokens of one big decode-shaped problem, and K past the register path of top-k.
  for (Gating gating : {Gating::kThreshold, Gating::kTopK}) {
    for (int64_t K : {14336, 20000}) {
      if (quick && K == 14336) continue;
      const CheckCase c{1, K, 256, gating, 0.65f, true, 0};
      failed += run_check<__half>(c, stream, dev, seed++) ? 0 : 1;
      ++total;
      const CheckCase c8{8, K, 96, gating, 0.5f, false, 1};
      failed += run_check<__half>(c8, stream, dev, seed++) ? 0 : 1;
      ++total;
    }
  }
  // The grouped decode path: q/k/v- and gate/up-like sets, odd column counts, up to 8 weights.
  const std::vector<std::vector<int64_t>> groups = {{64, 16, 16}, {136, 136}, {3, 77, 1, 520}, {1000},
                                                    {1536, 512, 512}, {8, 8, 8, 8, 8, 8, 8, 8}};
  for (int64_t M : quick ? std::vector<int64_t>{1, 5} : std::vector<int64_t>{1, 2, 5, 8})
    for (int64_t K : quick ? std::vector<int64_t>{17, 1000} : std::vector<int64_t>{17, 1000, 4096})
      for (const auto& Ns : groups) {
        const bool bias = seed % 2 == 0;
        const int t = static_cast<int>(seed % 3);
        const bool ok = t == 0 ? run_group_check<__half>(M, K, Ns, bias, stream, dev, seed)
                                : (t == 1 ? run_group_check<__nv_bfloat16>(M, K, Ns, bias, stream, dev, seed)
                                          : run_group_check<float>(M, K, Ns, bias, stream, dev, seed));
        ++total;
        failed += ok ? 0 : 1;
        ++seed;
      }
  std::printf("check: %d cases, %d failed\n", total, failed);
  CHECK(cudaStreamDestroy(stream));
  return failed == 0 ? 0 : 1;
}

// ---------------------------------------------------------------------------------
// bench

struct BenchResult {
  double us;
  double gbs;
};

// A comma-separated list of integers from the environment ("4x2" reads as 42), or `fallback`.
std::vector<int> env_ints(const char* name, std::vector<int> fallback) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  std::vector<int> out;
  std::string item;
  for (const char* c = text;; ++c) {
    if (*c == ',' || *c == '\0') {
      std::string digits;
      for (char d : item)
        if ((d >= '0' && d <= '9') || (d == '-' && digits.empty())) digits += d;
      if (!digits.empty()) out.push_back(std::atoi(digits.c_str()));
      item.clear();
      if (*c == '\0') break;
    } else {
      item += *c;
    }
  }
  return out.empty() ? fallback : out;
}

// Reorders (x, scale) pairs so that the r-th highest score sits at (r * step) mod K with step
// near K / golden ratio: the top k of any k are spread evenly over the positions.
void spread_scores_evenly(std::vector<__half>& hx, std::vector<float>& fx, std::vector<float>& scale) {
  const int64_t K = static_cast<int64_t>(fx.size());
  std::vector<int64_t> order(static_cast<size_t>(K));
  for (int64_t i = 0; i < K; ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](int64_t a, int64_t b) { return host_score(fx[a], scale[a]) > host_score(fx[b], scale[b]); });
  int64_t step = static_cast<int64_t>(K * 0.6180339887) | 1;
  while (std::gcd(step, K) != 1) step += 2;
  std::vector<__half> nx(hx.size());
  std::vector<float> nf(fx.size()), ns(scale.size());
  for (int64_t r = 0; r < K; ++r) {
    const int64_t pos = (r * step) % K;
    nx[pos] = hx[order[r]];
    nf[pos] = fx[order[r]];
    ns[pos] = scale[order[r]];
  }
  hx.swap(nx);
  fx.swap(nf);
  scale.swap(ns);
}

int bench_all(bool quick) {
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const wina::cuda::DeviceInfo dev = device_info();
  print_device(device_props());
  const int64_t shapes[][2] = {{4096, 4096}, {4096, 14336}, {14336, 4096}};
  const float sparsities[] = {0.0f, 0.5f, 0.65f};
  const int chain = 32;
  const int replays = quick ? 10 : 30;
  // WINA_BENCH_BPSM / WINA_BENCH_VARIANTS ("4x2,8x1": rows a batch x batches) / WINA_BENCH_GATINGS
  // ("threshold", "topk") narrow or widen the sweep.
  const std::vector<int> bpsm_list = env_ints("WINA_BENCH_BPSM", {1, 2, 4, 8});
  std::printf("%-12s %-9s %5s %5s %4s %3s %5s %3s %4s %6s %9s %9s %8s\n", "shape", "gating", "s", "bpsm", "unr", "stg",
              "hp", "cl", "pf", "rows", "us/call", "GB/s", "kept");
  // (rows a batch, batches in flight) of the decode kernel's load loop.
  const std::vector<int> variant_codes = env_ints("WINA_BENCH_VARIANTS", {41, 81, 161, 42, 82, 162});
  // WINA_BENCH_OPTS: decode options as two digits: l2_hints, then pdl_first ("10": the decode
  // kernel waits for the previous call to finish before it starts).
  const std::vector<int> opt_codes = env_ints("WINA_BENCH_OPTS", {11});
  // WINA_BENCH_CLUSTERS: 0 (split-K partial sums and a reduction kernel), 2, 4, 8 (cluster plans),
  // -1 (MakePlan's default plan, whatever the other settings).
  const std::vector<int> clusters = env_ints("WINA_BENCH_CLUSTERS", {0});
  // WINA_BENCH_EVEN=1: the same values of x and the scales, placed so that every slab keeps
  // nearly the same number of rows (an upper bound of what balancing the slabs can gain).
  const bool even_spread = env_ints("WINA_BENCH_EVEN", {0})[0] != 0;
  // WINA_BENCH_PREFETCH: Plan::prefetch_rows values to sweep (-1: MakePlan's choice).
  const std::vector<int> prefetches = env_ints("WINA_BENCH_PREFETCH", {-1});
  const char* gatings_env = std::getenv("WINA_BENCH_GATINGS");
  const std::string gatings = gatings_env != nullptr ? gatings_env : "threshold,topk";
  for (const auto& shape : shapes) {
    const int64_t K = shape[0], N = shape[1];
    const size_t wbytes = static_cast<size_t>(K * N) * sizeof(__half);
    const int copies = static_cast<int>(std::max<size_t>(2, (512ull << 20) / wbytes + 1));
    Rng rng(K * 31 + N);
    std::vector<__half> hb(static_cast<size_t>(K * N));
    for (auto& v : hb) v = __float2half_rn(rng.normal() * 0.02f);
    std::vector<__half> hx;
    std::vector<float> fx, scale;
    random_token(rng, K, hx, fx, scale);
    if (even_spread) spread_scores_evenly(hx, fx, scale);
    DeviceBuffers buf;
    std::vector<__half*> dbs;
    for (int c = 0; c < copies; ++c) {
      __half* d = static_cast<__half*>(buf.alloc(wbytes));
      CHECK(cudaMemcpy(d, hb.data(), wbytes, cudaMemcpyHostToDevice));
      dbs.push_back(d);
    }
    __half* dx = static_cast<__half*>(buf.alloc(K * sizeof(__half)));
    float* dscale = static_cast<float*>(buf.alloc(K * sizeof(float)));
    __half* dy = static_cast<__half*>(buf.alloc(N * sizeof(__half) * chain));
    float* dthr = static_cast<float*>(buf.alloc(sizeof(float)));
    int64_t* dk = static_cast<int64_t*>(buf.alloc(sizeof(int64_t)));
    CHECK(cudaMemcpy(dx, hx.data(), K * sizeof(__half), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(dscale, scale.data(), K * sizeof(float), cudaMemcpyHostToDevice));
    const std::vector<float> sorted = sorted_scores(fx, scale);

    for (float s : sparsities) {
      const float thr = s <= 0.0f ? -1.0f : sorted[static_cast<size_t>(s * K)];
      const int64_t kk = K - static_cast<int64_t>(std::lround(s * K));
      CHECK(cudaMemcpy(dthr, &thr, sizeof(float), cudaMemcpyHostToDevice));
      CHECK(cudaMemcpy(dk, &kk, sizeof(int64_t), cudaMemcpyHostToDevice));
      int64_t kept_thr = 0;
      for (int64_t i = 0; i < K; ++i) kept_thr += host_score(fx[i], scale[i]) > thr;
      for (Gating gating : {Gating::kThreshold, Gating::kTopK}) {
        if (gatings.find(gating == Gating::kTopK ? "topk" : "threshold") == std::string::npos) continue;
        const int64_t kept = gating == Gating::kTopK ? kk : kept_thr;
        for (int bpsm : bpsm_list) {
          for (const int code : variant_codes) {
           for (const int opts : opt_codes) {
            for (const int cluster : clusters) {
            for (const int prefetch : prefetches) {
            const int unroll = code / 10, stages = code % 10;
            const int pdl = dev.cc_major >= 9 ? 1 : 0;
            if (quick && (bpsm == 1 || bpsm == 8)) continue;
            Problem p;
            p.x = dx; p.score_scale = dscale; p.threshold = dthr; p.k = dk;
            p.M = 1; p.K = K; p.N = N; p.gating = gating; p.b = dbs[0];
            Plan plan = wina::cuda::MakePlan<__half>(p, dev, bpsm);
            plan.pdl = pdl != 0;
            plan.unroll = unroll;
            plan.stages = stages;
            plan.l2_hints = opts / 10 != 0;
            plan.pdl_first = plan.pdl && opts % 10 != 0;
            if (cluster == -1) {
              plan = wina::cuda::MakePlan<__half>(p, dev);
            } else if (cluster > 0) {
              if (!try_cluster_plan(plan, p.M, K, cluster, dev)) continue;
              plan.pdl_first = plan.pdl && opts % 10 != 0;  // the option, not the cluster default
            }
            if (prefetch >= 0) plan.prefetch_rows = prefetch;  // -1: MakePlan's choice
            void* ws[chain];
            for (int c = 0; c < chain; ++c) ws[c] = buf.alloc(wina::cuda::WorkspaceBytes<__half>(p, plan));
            cudaGraph_t graph = nullptr;
            cudaGraphExec_t exec = nullptr;
            cudaError_t err = cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal);
            for (int c = 0; c < chain && err == cudaSuccess; ++c) {
              p.b = dbs[c % copies];
              p.y = dy + c * N;
              err = wina::cuda::LaunchWinaSparseMatMul<__half>(p, plan, ws[c], wina::cuda::Stream(stream));
            }
            const cudaError_t end = cudaStreamEndCapture(stream, &graph);
            if (err == cudaSuccess) err = end;
            if (err == cudaSuccess) err = cudaGraphInstantiate(&exec, graph, 0);
            if (err != cudaSuccess) {
              std::printf("bpsm=%d unroll=%d stages=%d: graph capture failed: %s\n", bpsm, unroll, stages,
                          cudaGetErrorString(err));
              cudaGetLastError();
              if (graph) cudaGraphDestroy(graph);
              continue;
            }
            const double us = replay_median_us(stream, exec, chain, replays);
            CHECK(cudaGetLastError());
            const double bytes = static_cast<double>(kept) * N * sizeof(__half);
            char shape_name[32];
            std::snprintf(shape_name, sizeof shape_name, "%lldx%lld", (long long)K, (long long)N);
            std::printf("%-12s %-9s %5.2f %5d %4d %3d %4d%d %3d %4d %6lld %9.2f %9.0f %8lld\n", shape_name,
                        gating == Gating::kTopK ? "topk" : "threshold", s, bpsm, plan.unroll, plan.stages,
                        plan.l2_hints ? 1 : 0, plan.pdl_first ? 1 : 0, plan.cluster, plan.prefetch_rows, (long long)plan.rows_per_split, us,
                        bytes / us / 1e3, (long long)kept);
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
  CHECK(cudaStreamDestroy(stream));
  return 0;
}

// One plain (non-graph) call per case, for a profiler: ncu -k regex:decode ... profile
int profile_all() {
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const wina::cuda::DeviceInfo dev = device_info();
  const int64_t shapes[][2] = {{4096, 4096}, {4096, 14336}, {14336, 4096}};
  for (const auto& shape : shapes) {
    const int64_t K = shape[0], N = shape[1];
    Rng rng(K + N);
    std::vector<__half> hb(static_cast<size_t>(K * N)), hx(static_cast<size_t>(K));
    std::vector<float> scale(static_cast<size_t>(K)), sorted(static_cast<size_t>(K));
    for (auto& v : hb) v = __float2half_rn(rng.normal() * 0.02f);
    for (int64_t i = 0; i < K; ++i) {
      hx[i] = __float2half_rn(rng.normal());
      scale[i] = 0.5f + rng.uniform();
      sorted[i] = host_score(__half2float(hx[i]), scale[i]);
    }
    std::sort(sorted.begin(), sorted.end());
    DeviceBuffers buf;
    __half* db = static_cast<__half*>(buf.alloc(hb.size() * 2));
    __half* dx = static_cast<__half*>(buf.alloc(hx.size() * 2));
    __half* dy = static_cast<__half*>(buf.alloc(N * 2));
    float* dscale = static_cast<float*>(buf.alloc(K * 4));
    float* dthr = static_cast<float*>(buf.alloc(4));
    int64_t* dk = static_cast<int64_t*>(buf.alloc(8));
    CHECK(cudaMemcpy(db, hb.data(), hb.size() * 2, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(dx, hx.data(), hx.size() * 2, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(dscale, scale.data(), K * 4, cudaMemcpyHostToDevice));
    for (float s : {0.0f, 0.5f}) {
      for (Gating gating : {Gating::kThreshold, Gating::kTopK}) {
        if (gating == Gating::kTopK && s == 0.0f) continue;
        const float thr = s <= 0.0f ? -1.0f : sorted[static_cast<size_t>(s * K)];
        const int64_t kk = K - static_cast<int64_t>(std::lround(s * K));
        CHECK(cudaMemcpy(dthr, &thr, 4, cudaMemcpyHostToDevice));
        CHECK(cudaMemcpy(dk, &kk, 8, cudaMemcpyHostToDevice));
        Problem p;
        p.x = dx; p.b = db; p.score_scale = dscale; p.threshold = dthr; p.k = dk; p.y = dy;
        p.M = 1; p.K = K; p.N = N; p.gating = gating;
        const Plan plan = wina::cuda::MakePlan<__half>(p, dev);
        void* ws = buf.alloc(wina::cuda::WorkspaceBytes<__half>(p, plan));
        std::printf("profile %lldx%lld %s s=%.2f rows=%lld splits=%lld\n", (long long)K, (long long)N,
                    gating == Gating::kTopK ? "topk" : "threshold", s, (long long)plan.rows_per_split,
                    (long long)plan.splits);
        CHECK(wina::cuda::LaunchWinaSparseMatMul<__half>(p, plan, ws, wina::cuda::Stream(stream)));
        CHECK(cudaStreamSynchronize(stream));
      }
    }
  }
  CHECK(cudaStreamDestroy(stream));
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return wina_bench::tool_main(argc, argv, check_all, bench_all, profile_all); }

// Shared parts of the stand-alone CUDA check and timing tools (launcher_bench.cu, nbits_bench.cu):
// the error check, the random numbers, the element types, the host gating reference, device
// buffers and the event timing of CUDA graphs. Each tool is one translation unit that includes
// this header once.
#pragma once

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

#include "cuda/plan.h"


#define CHECK(call)                                                                                  \
  do {                                                                                               \
    cudaError_t err_ = (call);                                                                       \
    if (err_ != cudaSuccess) {                                                                       \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(err_)); \
      std::exit(1);                                                                                  \
    }                                                                                                \
  } while (0)

namespace wina_bench {

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
  float uniform() { return (next() >> 40) * (1.0f / 16777216.0f); }
  float normal() {
    float a = 0;
    for (int i = 0; i < 4; ++i) a += uniform();
    return (a - 2.0f) * 1.7320508f;
  }
  int below(int n) { return static_cast<int>(next() % static_cast<uint64_t>(n)); }
};

template <typename T> T from_f(float v);
template <> float from_f<float>(float v) { return v; }
template <> __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
float to_f(float v) { return v; }
float to_f(__half v) { return __half2float(v); }
float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> const char* type_name();
template <> const char* type_name<float>() { return "float32"; }
template <> const char* type_name<__half>() { return "float16"; }
template <> const char* type_name<__nv_bfloat16>() { return "bfloat16"; }

float host_score(float x, float scale) {
  const float s = std::fabs(x) * scale;
  return std::isnan(s) ? INFINITY : s;
}

uint32_t host_order_key(float s) {
  uint32_t u;
  std::memcpy(&u, &s, 4);
  if (std::isnan(s)) u = 0x7f800000u;
  if (u == 0x80000000u) u = 0u;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// keep[m * K + i] by the oracle's rules, and for top-k (where keys and cuts are given) the
// per-token rule (key, cut) that the float op's select kernel writes:
// keep(i) = key_i > key || (key_i == key && i <= cut).
std::vector<char> host_keep(const std::vector<float>& x, const std::vector<float>& scale, int64_t M, int64_t K,
                            wina::Gating gating, float threshold, int64_t k,
                            std::vector<uint32_t>* keys = nullptr, std::vector<int32_t>* cuts = nullptr) {
  std::vector<char> keep(static_cast<size_t>(M * K), 0);
  std::vector<float> s(static_cast<size_t>(K));
  std::vector<int64_t> order(static_cast<size_t>(K));
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t i = 0; i < K; ++i) s[i] = host_score(x[m * K + i], scale[i]);
    if (gating == wina::Gating::kThreshold) {
      for (int64_t i = 0; i < K; ++i) keep[m * K + i] = s[i] > threshold;
      continue;
    }
    const int64_t kk = std::min<int64_t>(std::max<int64_t>(k, 0), K);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return s[a] > s[b]; });
    uint32_t key = 0xffffffffu;
    int32_t cut = -1;
    if (kk > 0) {
      key = host_order_key(s[order[kk - 1]]);
      for (int64_t r = 0; r < kk; ++r)
        if (host_order_key(s[order[r]]) == key) cut = std::max<int32_t>(cut, static_cast<int32_t>(order[r]));
    }
    for (int64_t r = 0; r < kk; ++r) keep[m * K + order[r]] = 1;
    if (keys != nullptr) keys->push_back(key);
    if (cuts != nullptr) cuts->push_back(cut);
  }
  return keep;
}

struct DeviceBuffers {
  std::vector<void*> ptrs;
  void* alloc(size_t bytes) {
    void* p = nullptr;
    CHECK(cudaMalloc(&p, bytes ? bytes : 1));
    ptrs.push_back(p);
    return p;
  }
  template <typename V>
  V* upload(const std::vector<V>& h) {
    V* d = static_cast<V*>(alloc(h.size() * sizeof(V)));
    if (!h.empty()) CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(V), cudaMemcpyHostToDevice));
    return d;
  }
  ~DeviceBuffers() {
    for (void* p : ptrs) cudaFree(p);
  }
};

wina::cuda::DeviceInfo device_info() {
  int dev = 0;
  CHECK(cudaGetDevice(&dev));
  wina::cuda::DeviceInfo info;
  CHECK(cudaDeviceGetAttribute(&info.sm_count, cudaDevAttrMultiProcessorCount, dev));
  CHECK(cudaDeviceGetAttribute(&info.cc_major, cudaDevAttrComputeCapabilityMajor, dev));
  return info;
}

// A check case's X: normal values, or (special 1) ties among a few magnitudes, or (special 2)
// normal values with NaN at every 97th from the 5th; fx the values the device sees.
template <typename T>
void random_x(Rng& rng, int special, std::vector<T>& hx, std::vector<float>& fx) {
  for (size_t i = 0; i < hx.size(); ++i) {
    float v = special == 1 ? std::floor(rng.uniform() * 9.0f - 4.0f) * 0.5f : rng.normal();
    if (special == 2 && i % 97 == 5) v = NAN;
    hx[i] = from_f<T>(v);
    fx[i] = to_f(hx[i]);
  }
}

// A check case's score scales: a few values (special 1, for ties) or uniform in [0.5, 1.5).
void random_score_scale(Rng& rng, int special, std::vector<float>& scale) {
  for (float& s : scale) s = special == 1 ? 0.5f * (1 + (rng.next() % 3)) : 0.5f + rng.uniform();
}

// A check case's gate for sparsity s of M x K scores: the threshold at the s-quantile of the
// finite scores (-1: keep all, s <= 0) and k = K - round(s K); special 3 gives a NaN
// threshold and k < 0.
void case_gate(const std::vector<float>& fx, const std::vector<float>& scale, int64_t M, int64_t K,
               wina::Gating gating, float sparsity, int special, float* threshold, int64_t* k) {
  *threshold = 0.0f;
  *k = K - static_cast<int64_t>(std::lround(sparsity * K));
  if (gating == wina::Gating::kThreshold) {
    std::vector<float> s;
    for (int64_t i = 0; i < M * K; ++i) {
      const float v = host_score(fx[i], scale[i % std::max<int64_t>(K, 1)]);
      if (std::isfinite(v)) s.push_back(v);
    }
    std::sort(s.begin(), s.end());
    *threshold = sparsity <= 0.0f || s.empty() ? -1.0f : s[std::min(s.size() - 1, static_cast<size_t>(sparsity * s.size()))];
    if (special == 3) *threshold = NAN;
  } else if (special == 3) {
    *k = -3;
  }
}

// A timed token of K inputs (x in float16, fx its float values, score scales in [0.5, 1.5)).
void random_token(Rng& rng, int64_t K, std::vector<__half>& hx, std::vector<float>& fx, std::vector<float>& scale) {
  hx.resize(static_cast<size_t>(K));
  fx.resize(static_cast<size_t>(K));
  scale.resize(static_cast<size_t>(K));
  for (int64_t i = 0; i < K; ++i) {
    hx[i] = __float2half_rn(rng.normal());
    fx[i] = __half2float(hx[i]);
    scale[i] = 0.5f + rng.uniform();
  }
}

// The scores of one token, ascending (thresholds at a sparsity's quantile).
std::vector<float> sorted_scores(const std::vector<float>& fx, const std::vector<float>& scale) {
  std::vector<float> sorted(fx.size());
  for (size_t i = 0; i < fx.size(); ++i) sorted[i] = host_score(fx[i], scale[i]);
  std::sort(sorted.begin(), sorted.end());
  return sorted;
}

// The current device's properties.
cudaDeviceProp device_props() {
  cudaDeviceProp prop;
  int dev_id = 0;
  CHECK(cudaGetDevice(&dev_id));
  CHECK(cudaGetDeviceProperties(&prop, dev_id));
  return prop;
}

// The "device:" line of a bench's output.
void print_device(const cudaDeviceProp& prop) {
  std::printf("device: %s, %d SMs, L2 %d MiB, cc %d.%d\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20,
              prop.major, prop.minor);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// Median µs a call over `replays` replays (after 3 untimed) of a graph of `chain` calls, timed by events.
double replay_median_us(cudaStream_t stream, cudaGraphExec_t exec, int chain, int replays) {
  for (int w = 0; w < 3; ++w) CHECK(cudaGraphLaunch(exec, stream));
  cudaEvent_t e0, e1;
  CHECK(cudaEventCreate(&e0));
  CHECK(cudaEventCreate(&e1));
  std::vector<double> times;
  for (int r = 0; r < replays; ++r) {
    CHECK(cudaEventRecord(e0, stream));
    CHECK(cudaGraphLaunch(exec, stream));
    CHECK(cudaEventRecord(e1, stream));
    CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, e0, e1));
    times.push_back(ms * 1000.0 / chain);
  }
  CHECK(cudaEventDestroy(e0));
  CHECK(cudaEventDestroy(e1));
  return median(times);
}

// A tool's command line: check [quick] (the default) | bench [quick] (| profile where the tool
// has one). Returns the exit status.
int tool_main(int argc, char** argv, int (*check)(bool), int (*bench)(bool), int (*profile)() = nullptr) {
  const std::string what = argc > 1 ? argv[1] : "check";
  const bool quick = argc > 2 && std::string(argv[2]) == "quick";
  if (what == "check") return check(quick);
  if (what == "bench") return bench(quick);
  if (profile != nullptr && what == "profile") return profile();
  std::fprintf(stderr, "usage: %s check [quick] | bench [quick]%s\n", argv[0], profile != nullptr ? " | profile" : "");
  return 2;
}

}  // namespace wina_bench

// Where the time of the one-token WinaSparseMatMulNBits CPU kernel goes, without ONNX Runtime:
// the library's own AVX-512 inner loops (isa/kernels_impl.h, compiled here with the library's
// flags) timed on one thread, against reading the same bytes alone.
//
//   kernel L2      the kernel on one weight that stays in L2 (compute alone)
//   kernel L3      the kernel over copies that fit the last-level cache
//   kernel DRAM    the kernel over copies well past the last-level cache (a decode step)
//   read seq       the whole weight (codes and scales) read sequentially: the streaming bound
//   read kept      only the kept rows' lines and their blocks' scales, in the kernel's order
//                  and with its prefetches, nothing computed: the bound of this access pattern
//
// Times are the calling thread's CPU time (a shared machine takes the core away from time to
// time), the minimum over interleaved repetitions, per weight. Weights: random codes, float32
// scales, block 32, no zero points; x random; kept rows a random subset (or, with --blocky,
// the first rows of each block).
//
// Build and run: benchmarks/nbits_cpu_proto/run.sh K N [--blocky]
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <random>
#include <vector>

#define WINA_TILE_STRIDE 8
#define WINA_TILE_NV 3
#include "isa/kernels_impl.h"

WINA_DEFINE_ISA_TABLE(isa_kernels_table, "avx512")

namespace {

using namespace wina;

double cpu_now() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

volatile int sink;

void store_sink(__m512i v) {
  alignas(64) int32_t lanes[16];
  _mm512_store_si512(lanes, v);
  sink = lanes[0];
}

struct Copy {
  std::vector<uint8_t> codes;
  std::vector<float> scales;
  NbitsWeight w;
};

std::vector<Copy> make_copies(int64_t K, int64_t N, int64_t count, std::mt19937_64& rng) {
  std::vector<Copy> copies(count);
  for (Copy& c : copies) {
    c.codes.resize(K * N / 2 + 64);  // read_kept reads whole 64-byte chunks
    c.scales.resize(K / 32 * N);
    for (auto& b : c.codes) b = static_cast<uint8_t>(rng());
    for (auto& s : c.scales) s = 0.001f + (rng() % 1000) * 1e-5f;
    c.w = NbitsWeight{c.codes.data(), c.scales.data(), nullptr, kFloat32, kZeroPointsNone, K, N, N / 2, 32, K / 32};
  }
  return copies;
}

// Reads the whole weight in address order.
__attribute__((noinline)) void read_seq(const NbitsWeight& w) {
  __m512i a = _mm512_setzero_si512(), b = a;
  const char* p = reinterpret_cast<const char*>(w.codes);
  const int64_t n = w.K * w.ldb;
  for (int64_t i = 0; i + 128 <= n; i += 128) {
    a = _mm512_xor_si512(a, _mm512_loadu_si512(p + i));
    b = _mm512_xor_si512(b, _mm512_loadu_si512(p + i + 64));
  }
  const char* q = static_cast<const char*>(w.scales);
  for (int64_t i = 0; i + 64 <= w.blocks * w.N * 4; i += 64) a = _mm512_xor_si512(a, _mm512_loadu_si512(q + i));
  store_sink(_mm512_xor_si512(a, b));
}

// Reads what the int8 kernel reads, in its order (block by block, 64 bytes of each kept row
// at a time, then the chunk's scales), with its prefetches of the next block.
__attribute__((noinline)) void read_kept(const NbitsWeight& w, const int64_t* first, const int32_t* idx) {
  __m512i a = _mm512_setzero_si512();
  for (int64_t b = 0; b < w.blocks; ++b) {
    const int64_t f = first[b], cnt = first[b + 1] - f;
    if (cnt == 0) continue;
    const NbNext next = nb_next_block(first, idx, b, w.blocks);
    for (int64_t byte0 = 0; byte0 < w.ldb; byte0 += 64) {
      NbPrefetch<kFloat32> prefetch(w, next, byte0, 64, (cnt + 3) / 4);
      for (int64_t r = 0; r < cnt; ++r) {
        if (r % 4 == 0) prefetch.step();
        a = _mm512_xor_si512(a, _mm512_loadu_si512(w.codes + static_cast<int64_t>(idx[f + r]) * w.ldb + byte0));
      }
      prefetch.finish();
      const char* s = reinterpret_cast<const char*>(static_cast<const float*>(w.scales) + b * w.N + 2 * byte0);
      for (int64_t off = 0; off < 512 && 2 * byte0 * 4 + off < w.N * 4; off += 64)
        a = _mm512_xor_si512(a, _mm512_loadu_si512(s + off));
    }
  }
  store_sink(a);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s K N [--blocky]\n", argv[0]);
    return 2;
  }
  const int64_t K = std::atol(argv[1]), N = std::atol(argv[2]);
  const bool blocky = argc > 3 && std::strcmp(argv[3], "--blocky") == 0;
  if (K % 32 || N % 32) {
    std::fprintf(stderr, "K and N must be multiples of 32\n");
    return 2;
  }
  const IsaKernels& isa = isa_kernels_table();
  const NbitsDecodeFn int8 = isa.nbits->decode_int8[kFloat32];
  const NbitsDecodeFn fp = isa.nbits->decode_float[kFloat32];
  if (int8 == nullptr) {
    std::fprintf(stderr, "this CPU has no AVX-512 VNNI and VBMI\n");
    return 2;
  }
  const int64_t bytes = K * N / 2 + K / 32 * N * 4;
  std::mt19937_64 rng(1);
  std::vector<Copy> l2 = make_copies(K, N, 1, rng);
  std::vector<Copy> l3 = make_copies(K, N, std::max<int64_t>(1, 12000000 / bytes), rng);
  std::vector<Copy> dram = make_copies(K, N, std::max<int64_t>(1, 300000000 / bytes), rng);
  std::normal_distribution<float> normal;
  std::vector<float> x(K);
  for (auto& v : x) v = normal(rng);
  std::printf("# %ldx%ld, block 32, float32 scales, %.2f MB per weight, copies: L3 %zu, DRAM %zu, kept rows %s\n", K, N,
              bytes / 1e6, l3.size(), dram.size(), blocky ? "first of each block" : "random");
  std::printf("%8s %10s %10s %10s %10s %10s %10s %10s %10s\n", "sparsity", "int8 L2", "int8 L3", "int8 DRAM",
              "float L2", "float DRAM", "read seq", "read kept", "kept MB");
  std::vector<float> work(nbits_work_floats(N)), out(N);
  for (double s : {0.0, 0.25, 0.4, 0.5, 0.65}) {
    std::vector<int> order(K);
    for (int64_t i = 0; i < K; ++i) order[i] = static_cast<int>(i);
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<char> keep(K, 0);
    const int64_t kept = std::llround((1 - s) * K);
    for (int64_t i = 0; i < kept; ++i) keep[order[i]] = 1;
    if (blocky)
      for (int64_t i = 0; i < K; ++i) keep[i] = (i % 32) < std::llround((1 - s) * 32);
    std::vector<int32_t> idx;
    std::vector<float> val;
    for (int64_t i = 0; i < K; ++i)
      if (keep[i]) {
        idx.push_back(static_cast<int32_t>(i));
        val.push_back(x[i]);
      }
    std::vector<int64_t> first(K / 32 + 1);
    for (int64_t b = 0, r = 0; b <= K / 32; ++b) {
      while (r < static_cast<int64_t>(idx.size()) && idx[r] < b * 32) ++r;
      first[b] = r;
    }
    auto kernel = [&](NbitsDecodeFn fn, std::vector<Copy>& set) {
      for (Copy& c : set) fn(c.w, 0, c.w.blocks, first.data(), idx.data(), val.data(), work.data(), out.data());
    };
    const int cases = 7;
    double best[cases];
    for (double& b : best) b = 1e30;
    for (int rep = 0; rep < 11; ++rep) {
      for (int k = 0; k < cases; ++k) {
        std::vector<Copy>& set = k == 0 || k == 3 ? l2 : (k == 1 ? l3 : dram);
        const int inner = k == 0 || k == 3 ? 200 : 1;
        const double t0 = cpu_now();
        for (int i = 0; i < inner; ++i) {
          if (k == 0 || k == 1 || k == 2) kernel(int8, set);
          if (k == 3 || k == 4) kernel(fp, set);
          if (k == 5) for (Copy& c : set) read_seq(c.w);
          if (k == 6) for (Copy& c : set) read_kept(c.w, first.data(), idx.data());
        }
        best[k] = std::min(best[k], (cpu_now() - t0) / inner / set.size() * 1e6);
      }
    }
    const double kept_mb = (static_cast<double>(idx.size()) * N / 2 + K / 32 * N * 4) / 1e6;
    std::printf("%8.2f %10.1f %10.1f %10.1f %10.1f %10.1f %10.1f %10.1f %10.3f\n", s, best[0], best[1], best[2],
                best[3], best[4], best[5], best[6], kept_mb);
  }
  std::printf("# microseconds per weight; read seq moves %.3f MB\n", bytes / 1e6);
  return 0;
}

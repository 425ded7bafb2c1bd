// Unit test of the CUDA kernels' plan selection (src/cuda/plan.cc), host-only: no GPU, no
// CUDA toolkit. Built and run by tests/test_cuda_plan.py (CMakeLists.txt next to this file).
//
// The expected plans are those the kernels were tuned with (docs/cuda-notes.md); a change of
// plan selection that changes them must update them here, deliberately.
#include <cstdint>
#include <cstdio>
#include <string>

#include "cuda/plan.h"

using namespace wina::cuda;
using wina::Gating;

namespace {

int checks = 0;
int failures = 0;

void check(bool ok, const std::string& what) {
  ++checks;
  if (!ok) {
    ++failures;
    std::printf("FAILED: %s\n", what.c_str());
  }
}

const void* address(uintptr_t a) { return reinterpret_cast<const void*>(a); }
constexpr uintptr_t kAligned = 0x10000;

std::string describe(const Plan& p, size_t ws) {
  char s[200];
  std::snprintf(s, sizeof(s), "decode %d rows %lld splits %lld vec %d unroll %d stages %d pdl %d/%d l2 %d prefetch %d cluster %d ws %zu",
                p.decode, (long long)p.rows_per_split, (long long)p.splits, p.vectorized, p.unroll, p.stages, p.pdl,
                p.pdl_first, p.l2_hints, p.prefetch_rows, p.cluster, ws);
  return s;
}

struct Expected {
  const char* name;
  DeviceInfo device;
  size_t elem_bytes;
  int64_t M, K, N;
  Gating gating;
  uintptr_t b;
  int blocks_per_sm;
  const char* plan;  // describe() of the expected plan and workspace
};

const DeviceInfo kH200{132, 9};  // also the H100 SXM
const DeviceInfo kA100{108, 8};

// Llama-3-8B projections (q/o 4096x4096, k/v 4096x1024, gate/up 4096x14336, down 14336x4096).
const Expected kExpected[] = {
    {"fp16 o 1 token", kH200, 2, 1, 4096, 4096, Gating::kThreshold, kAligned, 0,
     "decode 1 rows 128 splits 32 vec 1 unroll 4 stages 2 pdl 1/1 l2 1 prefetch 0 cluster 0 ws 524288"},
    {"fp16 o 1 token top-k", kH200, 2, 1, 4096, 4096, Gating::kTopK, kAligned, 0,
     "decode 1 rows 128 splits 32 vec 1 unroll 4 stages 2 pdl 1/1 l2 1 prefetch 0 cluster 0 ws 524800"},
    {"fp16 k 1 token", kH200, 2, 1, 4096, 1024, Gating::kThreshold, kAligned, 0,
     "decode 1 rows 64 splits 64 vec 1 unroll 4 stages 2 pdl 1/1 l2 1 prefetch 0 cluster 0 ws 262144"},
    {"fp16 up 1 token: cluster plan", kH200, 2, 1, 4096, 14336, Gating::kThreshold, kAligned, 0,
     "decode 1 rows 512 splits 8 vec 1 unroll 4 stages 2 pdl 1/1 l2 1 prefetch 24 cluster 8 ws 0"},
    {"fp16 up 1 token top-k: cluster plan", kH200, 2, 1, 4096, 14336, Gating::kTopK, kAligned, 0,
     "decode 1 rows 512 splits 8 vec 1 unroll 4 stages 2 pdl 1/1 l2 1 prefetch 24 cluster 8 ws 512"},
    {"fp16 down 1 token", kH200, 2, 1, 14336, 4096, Gating::kThreshold, kAligned, 0,
     "decode 1 rows 448 splits 32 vec 1 unroll 4 stages 2 pdl 1/1 l2 1 prefetch 24 cluster 0 ws 524288"},
    {"fp16 up 2 tokens", kH200, 2, 2, 4096, 14336, Gating::kThreshold, kAligned, 0,
     "decode 1 rows 512 splits 8 vec 1 unroll 4 stages 2 pdl 1/1 l2 1 prefetch 24 cluster 8 ws 0"},
    {"fp16 o 8 tokens", kH200, 2, 8, 4096, 4096, Gating::kThreshold, kAligned, 0,
     "decode 1 rows 128 splits 32 vec 1 unroll 4 stages 1 pdl 1/1 l2 1 prefetch 0 cluster 0 ws 4194304"},
    {"fp16 up 8 tokens: no cluster", kH200, 2, 8, 4096, 14336, Gating::kThreshold, kAligned, 0,
     "decode 1 rows 480 splits 9 vec 1 unroll 4 stages 1 pdl 1/0 l2 1 prefetch 24 cluster 0 ws 4128768"},
    {"fp32 o 1 token", kH200, 4, 1, 4096, 4096, Gating::kThreshold, kAligned, 0,
     "decode 1 rows 256 splits 16 vec 1 unroll 4 stages 2 pdl 1/1 l2 1 prefetch 0 cluster 0 ws 262144"},
    {"fp16 o unaligned B: scalar loads", kH200, 2, 1, 4096, 4096, Gating::kThreshold, kAligned + 2, 0,
     "decode 1 rows 128 splits 32 vec 0 unroll 4 stages 2 pdl 1/1 l2 1 prefetch 0 cluster 0 ws 524288"},
    {"fp16 o 4 blocks per SM asked", kH200, 2, 1, 4096, 4096, Gating::kThreshold, kAligned, 4,
     "decode 1 rows 64 splits 64 vec 1 unroll 4 stages 2 pdl 1/1 l2 1 prefetch 0 cluster 0 ws 1048576"},
    {"fp16 o sm_80: no PDL", kA100, 2, 1, 4096, 4096, Gating::kThreshold, kAligned, 0,
     "decode 1 rows 160 splits 26 vec 1 unroll 4 stages 2 pdl 0/0 l2 1 prefetch 0 cluster 0 ws 425984"},
    {"fp16 up sm_80: no cluster", kA100, 2, 1, 4096, 14336, Gating::kThreshold, kAligned, 0,
     "decode 1 rows 512 splits 8 vec 1 unroll 4 stages 2 pdl 0/0 l2 1 prefetch 0 cluster 0 ws 458752"},
    {"bf16 prefill top-k", kH200, 2, 64, 4096, 4096, Gating::kTopK, kAligned, 0,
     "decode 0 rows 0 splits 0 vec 0 unroll 4 stages 1 pdl 1/0 l2 1 prefetch 0 cluster 0 ws 524800"},
};

void test_expected_plans() {
  for (const Expected& e : kExpected) {
    Problem p;
    p.M = e.M;
    p.K = e.K;
    p.N = e.N;
    p.b = address(e.b);
    p.gating = e.gating;
    const Plan plan = make_plan(p, e.elem_bytes, e.device, e.blocks_per_sm);
    const std::string got = describe(plan, workspace_bytes(p, plan, e.elem_bytes));
    check(got == e.plan, std::string(e.name) + ":\n  got      " + got + "\n  expected " + e.plan);
  }
}

void test_group_plan() {
  // q, k, v of Llama-3-8B in one grouped call: 8 + 2 + 2 column tiles.
  GroupProblem g;
  g.M = 1;
  g.K = 4096;
  g.count = 3;
  const int64_t n[] = {4096, 1024, 1024};
  for (int s = 0; s < 3; ++s) {
    g.segments[s].N = n[s];
    g.segments[s].b = address(kAligned + 0x1000 * s);
  }
  const Plan plan = make_group_plan(g, 2, kH200);
  const std::string got = describe(plan, group_workspace_bytes(g, plan));
  const std::string want =
      "decode 1 rows 192 splits 22 vec 1 unroll 4 stages 2 pdl 1/1 l2 1 prefetch 0 cluster 0 ws 540672";
  check(got == want, "grouped q/k/v:\n  got      " + got + "\n  expected " + want);
  g.segments[1].b = address(kAligned + 2);  // one unaligned weight: scalar loads for all
  check(!make_group_plan(g, 2, kH200).vectorized, "a grouped call with an unaligned weight is not vectorized");
}

// Every plan make_plan chooses is one the kernels accept, and the workspace matches it.
void test_invariants() {
  const DeviceInfo devices[] = {kH200, kA100, {46, 8}, {16, 9}, {0, 0}};
  const int64_t tokens[] = {1, 2, 3, 8, 9, 100};
  const int64_t dims[] = {1, 31, 64, 100, 1000, 4096, 4100, 11008, 14336, 65536};
  for (const DeviceInfo& d : devices)
    for (int64_t M : tokens)
      for (int64_t K : dims)
        for (int64_t N : dims)
          for (size_t eb : {size_t{2}, size_t{4}})
            for (int bpsm : {0, 1, 4}) {
              Problem p;
              p.M = M;
              p.K = K;
              p.N = N;
              p.b = address(kAligned);
              p.gating = Gating::kTopK;
              const Plan plan = make_plan(p, eb, d, bpsm);
              const std::string where = "M " + std::to_string(M) + " K " + std::to_string(K) + " N " +
                                        std::to_string(N) + " elem " + std::to_string(eb) + " sm " +
                                        std::to_string(d.sm_count) + " bpsm " + std::to_string(bpsm);
              check(plan.decode == (M <= kMaxDecodeTokens), "decode iff few tokens: " + where);
              check(plan.pdl == (d.cc_major >= 9), "PDL on sm_90 only: " + where);
              if (!plan.decode) {
                check(workspace_bytes(p, plan, eb) ==
                          gate_bytes(p) + align_up(static_cast<size_t>(M) * static_cast<size_t>(K) * eb),
                      "prefill workspace is the gate and the gated X: " + where);
                continue;
              }
              check(!bad_decode_plan(plan, M, K), "a plan the kernels accept: " + where);
              check(plan.splits * plan.rows_per_split >= K && (plan.splits - 1) * plan.rows_per_split < K,
                    "slabs cover K exactly: " + where);
              check(plan.vectorized == (N % static_cast<int64_t>(16 / eb) == 0), "16-byte loads iff whole vectors: " + where);
              if (plan.cluster > 0)
                check(d.cc_major >= 9 && M <= 2 && plan.vectorized && bpsm == 0 && plan.pdl_first,
                      "cluster plans: sm_90, <= 2 tokens, 16-byte loads, default occupancy, PDL first: " + where);
              check(workspace_bytes(p, plan, eb) ==
                        gate_bytes(p) + (plan.cluster > 0 ? 0 : partial_bytes(plan, M, N)),
                    "decode workspace is the gate and the partial sums: " + where);
            }
}

void test_workspace_and_checks() {
  Problem p;
  p.M = 3;
  p.K = 64;
  p.N = 16;
  p.b = address(kAligned);
  p.gating = Gating::kThreshold;
  check(gate_bytes(p) == 0, "threshold gating needs no gate in the workspace");
  p.gating = Gating::kTopK;
  check(gate_bytes(p) == 2 * 256, "top-k: keys and cuts, each aligned to 256 bytes");
  for (int64_t* dim : {&p.M, &p.K, &p.N}) {
    const int64_t keep = *dim;
    *dim = 0;
    check(workspace_bytes(p, make_plan(p, 2, kH200), 2) == 0, "an empty problem needs no workspace");
    *dim = keep;
  }
  check(align_up(1) == 256 && align_up(256) == 256 && align_up(257) == 512, "align_up to 256 bytes");
  check(tile_columns(2) == 512 && tile_columns(4) == 256, "a column tile is 64 threads x 16 bytes");
  check(column_tiles(14336, 2) == 28 && column_tiles(1, 4) == 1, "column tiles round up");
  check(!vectorizable(address(kAligned + 8), 4096, 2), "an unaligned B is not vectorizable");
  check(!vectorizable(address(kAligned), 4100 + 2, 2), "a row that is not whole vectors is not vectorizable");

  Plan good = decode_plan(1, 4096, 8, true, kH200, 0);
  check(!bad_decode_plan(good, 1, 4096), "decode_plan's plan is accepted");
  Plan bad = good;
  bad.rows_per_split = 100;
  check(bad_decode_plan(bad, 1, 4096), "rows not a multiple of 32 are refused");
  bad = good;
  bad.splits += 1;
  check(bad_decode_plan(bad, 1, 4096), "splits that do not match K are refused");
  bad = good;
  bad.rows_per_split = kMaxSlabRows + 32;
  bad.splits = (4096 + bad.rows_per_split - 1) / bad.rows_per_split;
  check(bad_decode_plan(bad, 1, 4096), "slabs over kMaxSlabRows are refused");
  check(bad_decode_plan(good, kMaxDecodeTokens + 1, 4096), "too many tokens for decode are refused");
  Plan cluster = decode_plan(1, 4096, 28, true, kH200, 0);
  check(cluster.cluster == 8 && !bad_decode_plan(cluster, 1, 4096), "the cluster plan of 4096x14336 is accepted");
  check(bad_decode_plan(cluster, 3, 4096), "cluster plans take at most two tokens");
  bad = cluster;
  bad.cluster = 3;
  check(bad_decode_plan(bad, 1, 4096), "clusters of 3 are refused");
  bad = cluster;
  bad.vectorized = false;
  check(bad_decode_plan(bad, 1, 4096), "cluster plans need 16-byte loads");
  check(partial_bytes(cluster, 1, 14336) == 0, "a cluster plan needs no partial sums");
}

}  // namespace

int main() {
  test_expected_plans();
  test_group_plan();
  test_invariants();
  test_workspace_and_checks();
  std::printf("cuda_plan_test: %d checks, %d failed\n", checks, failures);
  return failures == 0 ? 0 : 1;
}

// The CPU computation of WinaSparseMatMul (and WinaSparseMatMulNBits) on validated,
// flattened inputs: gating, the choice of decode (one token) or prefill (tiled) path,
// the split of the work into tasks for the intra-op thread pool, and the output conversion.
#pragma once

#include <cstddef>
#include <cstdint>

#include "gating.h"
#include "isa/isa.h"
#include "isa/nbits_isa.h"

namespace wina {

// Lists the kept features of one token in increasing index order: idx[c] = i and
// val[c] = x[i] (x already widened to float32); returns their count. idx and val
// need room for K + 16 entries. Thread-safe (per-thread work space; gate_token.cc).
int64_t gate_token(const IsaKernels& kernels, const float* x, const float* score_scale, int64_t K,
                   const GatingParams& params, int32_t* idx, float* val);

// Runs fn(data, i) for i in [0, total), possibly in parallel; returns when all are done.
struct ParallelRunner {
  void* context;
  void (*run)(void* context, void (*fn)(void*, size_t), size_t total, void* data);
};

struct SparseMatMulArgs {
  DType dtype;
  const void* x;              // [M, K], dtype
  const void* b;              // [K, N], dtype (unused with nbits)
  const float* score_scale;   // [K]
  const void* bias;           // [N], dtype, or nullptr
  void* y;                    // [M, N], dtype
  int64_t M, K, N;
  GatingParams gating;
  // WinaSparseMatMulNBits: the 4-bit weight (its scales of type dtype) instead of b, and
  // whether the decode may quantize x to int8 per block (accuracy_level 4).
  const NbitsWeight* nbits = nullptr;
  bool int8_activations = false;
};

// Computes y. The split into tasks depends only on the shapes, the kept set and the
// machine's core count, never on the pool size, so the result does not depend on
// intra_op_num_threads.
void sparse_matmul(const SparseMatMulArgs& args, const IsaKernels& kernels,
                   const ParallelRunner& parallel);

}  // namespace wina

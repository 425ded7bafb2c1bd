#include "sparse_kernel.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "gating.h"
#include "half_bits.h"

namespace wina {

namespace {

size_t element_size(DType dt) { return dt == kFloat32 ? 4 : 2; }

// Cores worth splitting work for (the pool never has more useful threads).
int64_t machine_threads() {
  static const int64_t n = [] {
    const unsigned hc = std::thread::hardware_concurrency();
    return static_cast<int64_t>(hc == 0 ? 1 : std::min(hc, 64u));
  }();
  return n;
}

void widen_row(DType dt, const void* src, int64_t n, float* dst) {
  if (dt == kFloat32) {
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
  } else if (dt == kFloat16) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; ++i) dst[i] = half_bits_to_float(s[i]);
  } else {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_bits_to_float(s[i]);
  }
}

void narrow_row(DType dt, const float* src, int64_t n, void* dst) {
  if (dt == kFloat32) {
    if (static_cast<const void*>(src) != dst) std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
  } else if (dt == kFloat16) {
    uint16_t* d = static_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < n; ++i) d[i] = float_to_half_bits(src[i]);
  } else {
    uint16_t* d = static_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < n; ++i) d[i] = float_to_bf16_bits(src[i]);
  }
}

// Grow-only buffers of the thread that calls Compute (concurrent Run calls use
// different threads, so they never share them).
struct Scratch {
  std::vector<float> xf, bias, acc, xs, work;
  std::vector<int32_t> idx;
  std::vector<int64_t> first, bounds;
  std::vector<TileDesc> tiles;
};

Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

template <typename V>
typename V::value_type* sized(V& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

// The bias as float32 (widened into s.bias unless it is float32 already), or nullptr.
const float* float_bias(const SparseMatMulArgs& a, Scratch& s) {
  if (a.bias == nullptr) return nullptr;
  if (a.dtype == kFloat32) return static_cast<const float*>(a.bias);
  float* bf = sized(s.bias, static_cast<size_t>(a.N));
  widen_row(a.dtype, a.bias, a.N, bf);
  return bf;
}

// ---------------------------------------------------------------------------
// Decode: one token. The kept rows are listed once; tasks take contiguous slices
// of that list and sum into their own float32 partial row, then one pass adds
// the partials (and bias) and writes y. Each task streams whole weight rows.

// y = bias + sum of the tasks' partial rows, in task order.
void finish_decode_row(const SparseMatMulArgs& a, const float* partials, int64_t tasks) {
  Scratch& s = scratch();
  const int64_t N = a.N;
  float* out = a.dtype == kFloat32 ? static_cast<float*>(a.y) : sized(s.xf, static_cast<size_t>(N));
  const float* bias = float_bias(a, s);
  // Row by row (vectorizes), the same additions in the same order as per column.
  if (out != partials) std::memcpy(out, partials, static_cast<size_t>(N) * sizeof(float));
  for (int64_t t = 1; t < tasks; ++t)
    for (int64_t n = 0; n < N; ++n) out[n] += partials[t * N + n];
  if (bias)
    for (int64_t n = 0; n < N; ++n) out[n] = bias[n] + out[n];
  if (a.dtype != kFloat32) narrow_row(a.dtype, out, N, a.y);
}

constexpr int64_t kMaxDecodeTasks = 8;
constexpr int64_t kDecodeBytesPerTask = 48 * 1024;

struct DecodeJob {
  const SparseMatMulArgs* args;
  const IsaKernels* kernels;
  const int32_t* idx;
  const float* val;
  int64_t count;
  int64_t tasks;
  float* partials;  // [tasks, N]
};

void decode_task(void* data, size_t task) {
  const DecodeJob& job = *static_cast<const DecodeJob*>(data);
  const int64_t N = job.args->N;
  const int64_t lo = job.count * static_cast<int64_t>(task) / job.tasks;
  const int64_t hi = job.count * static_cast<int64_t>(task + 1) / job.tasks;
  float* acc = job.partials + static_cast<int64_t>(task) * N;
  std::memset(acc, 0, static_cast<size_t>(N) * sizeof(float));
  job.kernels->decode[job.args->dtype](job.args->b, N, 0, N, job.idx + lo, job.val + lo, hi - lo, acc);
}

// The kept features of the one token of `a` (gate_token's idx and val, in s.idx and s.xs).
struct KeptFeatures {
  const int32_t* idx;
  const float* val;
  int64_t count;
};

KeptFeatures gate_one_token(const SparseMatMulArgs& a, const IsaKernels& kernels, Scratch& s) {
  const int64_t K = a.K;
  float* xf = sized(s.xf, static_cast<size_t>(K + 16));
  int32_t* idx = sized(s.idx, static_cast<size_t>(K + 16));
  float* val = sized(s.xs, static_cast<size_t>(K + 16));
  // score_scale is a per-node weight, usually cold: ask for all of it at once.
  for (int64_t i = 0; i < K; i += 16) __builtin_prefetch(a.score_scale + i);
  widen_row(a.dtype, a.x, K, xf);
  return {idx, val, gate_token(kernels, xf, a.score_scale, K, a.gating, idx, val)};
}

void decode(const SparseMatMulArgs& a, const IsaKernels& kernels, const ParallelRunner& parallel) {
  Scratch& s = scratch();
  const int64_t N = a.N;
  const auto [idx, val, count] = gate_one_token(a, kernels, s);

  const int64_t bytes = count * N * static_cast<int64_t>(element_size(a.dtype));
  int64_t tasks = std::min({machine_threads(), kMaxDecodeTasks, bytes / kDecodeBytesPerTask});
  tasks = std::max<int64_t>(1, std::min(tasks, count));
#ifdef WINA_FORCE_TASKS
  tasks = WINA_FORCE_TASKS;
#endif

  float* partials = sized(s.acc, static_cast<size_t>(tasks * N));
  DecodeJob job{&a, &kernels, idx, val, count, tasks, partials};
  if (tasks == 1) {
    decode_task(&job, 0);
  } else {
    parallel.run(parallel.context, decode_task, static_cast<size_t>(tasks), &job);
  }

  finish_decode_row(a, partials, tasks);
}

// ---------------------------------------------------------------------------
// Decode of a 4-bit weight: the ISA loops work per block of G input features (one scale
// per block and column), so tasks take contiguous ranges of blocks holding about equal
// numbers of kept rows; each sums into its own float32 partial row.

constexpr int64_t kNbitsDecodeBytesPerTask = 24 * 1024;
// Up to this many tokens, a 4-bit product runs the decode once per token.
constexpr int64_t kNbitsDecodeTokens = 8;

struct NbitsDecodeJob {
  const NbitsWeight* weight;
  NbitsDecodeFn fn;
  const int64_t* first;   // [blocks + 1]: first kept row of each block
  const int64_t* bounds;  // [tasks + 1]: first block of each task
  const int32_t* idx;
  const float* val;
  float* work;            // [tasks, nbits_work_floats(N)]
  float* partials;        // [tasks, N]
};

void nbits_decode_task(void* data, size_t task) {
  const NbitsDecodeJob& job = *static_cast<const NbitsDecodeJob*>(data);
  const NbitsWeight& w = *job.weight;
  const int64_t t = static_cast<int64_t>(task);
  job.fn(w, job.bounds[t], job.bounds[t + 1], job.first, job.idx, job.val, job.work + t * nbits_work_floats(w.N),
         job.partials + t * w.N);
}

void decode_nbits(const SparseMatMulArgs& a, const IsaKernels& kernels, const ParallelRunner& parallel) {
  Scratch& s = scratch();
  const NbitsWeight& w = *a.nbits;
  const int64_t N = a.N, blocks = w.blocks;
  const auto [idx, val, count] = gate_one_token(a, kernels, s);

  int64_t* first = sized(s.first, static_cast<size_t>(blocks + 1));
  for (int64_t b = 0, r = 0; b <= blocks; ++b) {
    while (r < count && idx[r] < b * w.block_size) ++r;
    first[b] = r;
  }
  int64_t tasks = std::min({machine_threads(), kMaxDecodeTasks, count * w.ldb / kNbitsDecodeBytesPerTask});
  tasks = std::max<int64_t>(1, std::min(tasks, blocks));
#ifdef WINA_FORCE_TASKS
  tasks = std::min<int64_t>(WINA_FORCE_TASKS, blocks);
#endif
  // Task t starts at the first block whose kept rows begin at or after count * t / tasks.
  int64_t* bounds = sized(s.bounds, static_cast<size_t>(tasks + 1));
  for (int64_t t = 0, b = 0; t <= tasks; ++t) {
    const int64_t target = count * t / tasks;
    while (b < blocks && first[b] < target) ++b;
    bounds[t] = t == tasks ? blocks : b;
  }

  const NbitsKernels& nk = *kernels.nbits;
  const NbitsDecodeFn fn =
      a.int8_activations && nk.decode_int8[a.dtype] != nullptr ? nk.decode_int8[a.dtype] : nk.decode_float[a.dtype];
  float* partials = sized(s.acc, static_cast<size_t>(tasks * N));
  float* work = sized(s.work, static_cast<size_t>(tasks * nbits_work_floats(N)));
  NbitsDecodeJob job{&w, fn, first, bounds, idx, val, work, partials};
  if (tasks == 1) {
    nbits_decode_task(&job, 0);
  } else {
    parallel.run(parallel.context, nbits_decode_task, static_cast<size_t>(tasks), &job);
  }
  finish_decode_row(a, partials, tasks);
}

// ---------------------------------------------------------------------------
// Prefill: tokens in tiles of `tile_stride`; each tile lists the union of the rows
// its tokens keep (with x = 0 where a token masks the row), so a row masked for
// the whole tile is never read and each kept row is read once per tile and
// column block. Tasks are (block of tiles) x (range of columns).

constexpr int64_t kTokensPerBlock = 128;
constexpr int64_t kMinTilesToPack = 3;

struct GateJob {
  const SparseMatMulArgs* args;
  const IsaKernels* kernels;
  int32_t stride;
  int32_t* idx;     // [tiles, K]
  float* xs;        // [tiles, K, stride]
  TileDesc* tiles;  // [tiles]
};

// Work space of one tile's gating, per thread.
struct TileScratch {
  std::vector<float> xf, val, dense;
  std::vector<int32_t> idx;
  std::vector<uint8_t> any;
};

void gate_tile(void* data, size_t tile_index) {
  const GateJob& job = *static_cast<const GateJob*>(data);
  const SparseMatMulArgs& a = *job.args;
  const int64_t K = a.K, S = job.stride;
  const int64_t t0 = static_cast<int64_t>(tile_index) * S;
  const int64_t tokens = std::min<int64_t>(S, a.M - t0);
  const size_t esize = element_size(a.dtype);

  thread_local TileScratch ts;
  float* xf = sized(ts.xf, static_cast<size_t>(K + 16));
  float* val = sized(ts.val, static_cast<size_t>(K + 16));
  int32_t* list = sized(ts.idx, static_cast<size_t>(K + 16));
  float* dense = sized(ts.dense, static_cast<size_t>(K * S));  // [K, S]: x where kept, else 0
  uint8_t* any = sized(ts.any, static_cast<size_t>(K));         // kept by any token of the tile
  std::fill(dense, dense + K * S, 0.0f);
  std::fill(any, any + K, uint8_t{0});
  for (int64_t t = 0; t < tokens; ++t) {
    widen_row(a.dtype, static_cast<const char*>(a.x) + static_cast<size_t>((t0 + t) * K) * esize, K, xf);
    const int64_t kept = gate_token(*job.kernels, xf, a.score_scale, K, a.gating, list, val);
    for (int64_t c = 0; c < kept; ++c) {
      dense[list[c] * S + t] = val[c];
      any[list[c]] = 1;
    }
  }
  int32_t* idx = job.idx + static_cast<int64_t>(tile_index) * K;
  float* xs = job.xs + static_cast<int64_t>(tile_index) * K * S;
  int64_t count = 0;
  for (int64_t i = 0; i < K; ++i) {
    if (!any[i]) continue;
    idx[count] = static_cast<int32_t>(i);
    std::memcpy(xs + count * S, dense + i * S, static_cast<size_t>(S) * sizeof(float));
    ++count;
  }
  job.tiles[tile_index] = TileDesc{idx, xs, count, static_cast<int32_t>(tokens), t0};
}

struct TilesJob {
  const SparseMatMulArgs* args;
  const IsaKernels* kernels;
  const TileDesc* tiles;
  int64_t num_tiles;
  int64_t tiles_per_block;
  int64_t column_chunks;
  int64_t chunk_width;
  const float* bias;
  float* yf;  // [M, N]: y itself for float32
};

// Columns per prefill micro-block (column chunks are multiples of it).
int64_t column_block(const SparseMatMulArgs& a, const IsaKernels& kernels) {
  return a.nbits != nullptr ? kernels.nbits->column_block : kernels.column_block;
}

// Work space of one prefill item, per thread.
struct PackScratch {
  std::vector<float> pack;
  std::vector<int32_t> used;
  std::vector<uint8_t> any;
};

void tiles_task(void* data, size_t item) {
  const TilesJob& job = *static_cast<const TilesJob*>(data);
  const SparseMatMulArgs& a = *job.args;
  const int64_t block = static_cast<int64_t>(item) / job.column_chunks;
  const int64_t chunk = static_cast<int64_t>(item) % job.column_chunks;
  const int64_t first = block * job.tiles_per_block;
  const int64_t count = std::min(job.tiles_per_block, job.num_tiles - first);
  const int64_t n0 = chunk * job.chunk_width;
  const int64_t n1 = std::min(a.N, n0 + job.chunk_width);
  if (count <= 0 || n0 >= n1) return;

  // With several tiles, each weight column block is packed once (rows any tile
  // keeps, as float32) and then read by every tile from a contiguous panel. 4-bit
  // weights are always dequantized into that panel.
  const TileDesc* tiles = job.tiles + first;
  float* pack = nullptr;
  const int32_t* used = nullptr;
  int64_t num_used = 0;
  if (count >= kMinTilesToPack || a.nbits != nullptr) {
    thread_local PackScratch ps;
    const int64_t K = a.K;
    uint8_t* any = sized(ps.any, static_cast<size_t>(K));
    std::fill(any, any + K, uint8_t{0});
    for (int64_t t = 0; t < count; ++t)
      for (int64_t u = 0; u < tiles[t].count; ++u) any[tiles[t].idx[u]] = 1;
    int32_t* list = sized(ps.used, static_cast<size_t>(K));
    for (int64_t i = 0; i < K; ++i) {
      list[num_used] = static_cast<int32_t>(i);
      num_used += any[i];
    }
    used = list;
    pack = sized(ps.pack, static_cast<size_t>(K * column_block(a, *job.kernels)));
  }
  if (a.nbits != nullptr) {
    job.kernels->nbits->tiles[a.dtype](*a.nbits, n0, n1, tiles, count, used, num_used, pack, job.bias, job.yf, a.N);
  } else {
    job.kernels->tiles[a.dtype](a.b, a.N, n0, n1, tiles, count, job.kernels->tile_stride, used, num_used,
                                pack, job.bias, job.yf, a.N);
  }
  if (a.dtype != kFloat32) {
    const size_t esize = element_size(a.dtype);
    const int64_t r0 = job.tiles[first].y_row;
    const int64_t r1 = job.tiles[first + count - 1].y_row + job.tiles[first + count - 1].tokens;
    for (int64_t r = r0; r < r1; ++r)
      narrow_row(a.dtype, job.yf + r * a.N + n0, n1 - n0,
                 static_cast<char*>(a.y) + static_cast<size_t>(r * a.N + n0) * esize);
  }
}

void prefill(const SparseMatMulArgs& a, const IsaKernels& kernels, const ParallelRunner& parallel) {
  Scratch& s = scratch();
  const int64_t M = a.M, K = a.K, N = a.N;
  const int64_t S = kernels.tile_stride;
  const int64_t num_tiles = (M + S - 1) / S;

  GateJob gate{&a,
               &kernels,
               static_cast<int32_t>(S),
               sized(s.idx, static_cast<size_t>(num_tiles * K)),
               sized(s.xs, static_cast<size_t>(num_tiles * K * S)),
               sized(s.tiles, static_cast<size_t>(num_tiles))};
  if (num_tiles == 1 || M * K < 4096) {
    for (int64_t t = 0; t < num_tiles; ++t) gate_tile(&gate, static_cast<size_t>(t));
  } else {
    parallel.run(parallel.context, gate_tile, static_cast<size_t>(num_tiles), &gate);
  }
  if (N == 0) return;

  const float* bias = float_bias(a, s);
  float* yf = a.dtype == kFloat32 ? static_cast<float*>(a.y) : sized(s.acc, static_cast<size_t>(M * N));

  // Work items: blocks of tiles (about kTokensPerBlock tokens, whose packed inputs
  // stay in L2 while the columns go by) times column chunks (multiples of the
  // micro-block width), enough of them to keep every core busy.
  const int64_t tiles_per_block = std::max<int64_t>(1, kTokensPerBlock / S);
  const int64_t blocks = (num_tiles + tiles_per_block - 1) / tiles_per_block;
  const int64_t width = column_block(a, kernels);
  const int64_t max_chunks = std::max<int64_t>(1, (N + width - 1) / width);
  const int64_t want = 4 * machine_threads();
  const int64_t chunks = std::clamp<int64_t>((want + blocks - 1) / blocks, 1, max_chunks);
  const int64_t chunk_width = ((N + chunks - 1) / chunks + width - 1) / width * width;
  const int64_t column_chunks = (N + chunk_width - 1) / chunk_width;

  TilesJob job{&a, &kernels, gate.tiles, num_tiles, tiles_per_block, column_chunks, chunk_width, bias, yf};
  const int64_t items = blocks * column_chunks;
  const int64_t flops = M * K * N;
  if (items == 1 || flops < (1 << 16)) {
    for (int64_t i = 0; i < items; ++i) tiles_task(&job, static_cast<size_t>(i));
  } else {
    parallel.run(parallel.context, tiles_task, static_cast<size_t>(items), &job);
  }
}

void fill_bias_only(const SparseMatMulArgs& a) {
  // K == 0: nothing to multiply; y = bias or 0.
  Scratch& s = scratch();
  float* row = sized(s.acc, static_cast<size_t>(a.N));
  if (a.bias != nullptr) {
    widen_row(a.dtype, a.bias, a.N, row);
  } else {
    std::fill(row, row + a.N, 0.0f);
  }
  const size_t esize = element_size(a.dtype);
  for (int64_t m = 0; m < a.M; ++m)
    narrow_row(a.dtype, row, a.N, static_cast<char*>(a.y) + static_cast<size_t>(m * a.N) * esize);
}

}  // namespace

void sparse_matmul(const SparseMatMulArgs& args, const IsaKernels& kernels,
                   const ParallelRunner& parallel) {
  if (args.M == 0 || args.N == 0) return;
  if (args.K == 0) {
    fill_bias_only(args);
  } else if (args.nbits != nullptr && args.M <= kNbitsDecodeTokens) {
    // A few tokens: each reads only its own kept rows (the tiles would dequantize the
    // union of their rows, for too few tokens to pay for it).
    const size_t esize = element_size(args.dtype);
    SparseMatMulArgs token = args;
    token.M = 1;
    for (int64_t m = 0; m < args.M; ++m) {
      token.x = static_cast<const char*>(args.x) + static_cast<size_t>(m * args.K) * esize;
      token.y = static_cast<char*>(args.y) + static_cast<size_t>(m * args.N) * esize;
      decode_nbits(token, kernels, parallel);
    }
  } else if (args.M == 1) {
    decode(args, kernels, parallel);
  } else {
    prefill(args, kernels, parallel);
  }
}

}  // namespace wina

#include "cuda/wina_sparse_matmul_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <dlfcn.h>
#include <library_types.h>

#include <cstdlib>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda/launchers.cuh"
#include "cuda/nbits_decode.cuh"
#include "cuda/topk_select.cuh"

namespace wina {

namespace {

void throw_on_error(OrtStatus* status) {
  if (status != nullptr) {
    Ort::Status owned(status);
    throw Ort::Exception(owned.GetErrorMessage(), owned.GetErrorCode());
  }
}

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": CUDA error " + cudaGetErrorName(err) + " (" +
                             cudaGetErrorString(err) + ")");
  }
}

}  // namespace

// Where the work of one kernel call goes: ORT's compute stream, scratch from the CUDA EP's
// allocator, and the device's properties.
struct CudaCall {
  OrtKernelContext* context;
  const OrtMemoryInfo* memory_info;
  OrtAllocator* allocator;
  cuda::Stream stream;
  cuda::DeviceInfo device;
};

namespace {

// Scratch from ORT's CUDA allocator, tied to the compute stream; returned at scope exit
// (ORT's arena hands it out again only in stream order, after this node's kernels).
class Scratch {
 public:
  Scratch(const CudaCall& call, size_t bytes) : allocator_(call.allocator) {
    if (bytes > 0) {
      throw_on_error(
          Ort::GetApi().KernelContext_GetScratchBuffer(call.context, call.memory_info, bytes, &ptr_));
    }
    if (bytes > 0 && ptr_ == nullptr) throw std::runtime_error("out of CUDA memory for the scratch buffer");
  }
  ~Scratch() {
    if (ptr_ != nullptr) allocator_->Free(allocator_, ptr_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  void* get() const { return ptr_; }

 private:
  OrtAllocator* allocator_;
  void* ptr_ = nullptr;
};

// cuBLAS for the prefill GEMM, opened at run time: the library must load where no CUDA is
// installed, and ORT's CUDA provider has already loaded libcublas into the process, so
// dlopen finds that copy. Only the three functions below are used, declared here by their
// documented C signatures (the cuBLAS headers are not needed to build).
class Cublas {
 public:
  using Handle = void*;
  // One process-wide instance; nullptr when cuBLAS cannot be opened or WINA_ONNX_CUDA_CUBLAS=0
  // (then the prefill path uses the built-in SIMT GEMM).
  static Cublas* get() {
    static Cublas* instance = [] {
      const char* v = std::getenv("WINA_ONNX_CUDA_CUBLAS");
      if (v != nullptr && v[0] == '0') return static_cast<Cublas*>(nullptr);
      auto* c = new Cublas();
      if (!c->open()) {
        delete c;
        return static_cast<Cublas*>(nullptr);
      }
      return c;
    }();
    return instance;
  }

  // Y [M, N] = X [M, K] B [K, N], all row-major and of the element type `type`, fp32
  // accumulation, enqueued on `stream`. Row-major Y is column-major Y^T = B^T X^T, so B
  // goes first: m = N, n = M, k = K, leading dimensions N, K, N.
  bool gemm(cudaStream_t stream, cudaDataType_t type, const void* x, const void* b, void* y, int64_t M, int64_t K,
            int64_t N) {
    std::lock_guard<std::mutex> lock(mutex_);
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) return false;
    if (handles_[device] == nullptr && create_(&handles_[device]) != 0) {
      handles_[device] = nullptr;
      return false;
    }
    Handle handle = handles_[device];
    if (set_stream_(handle, stream) != 0) return false;
    const float alpha = 1.0f, beta = 0.0f;
    constexpr int kOpN = 0;             // CUBLAS_OP_N
    constexpr int kCompute32F = 68;     // CUBLAS_COMPUTE_32F
    constexpr int kGemmDefault = -1;    // CUBLAS_GEMM_DEFAULT
    return gemm_ex_(handle, kOpN, kOpN, static_cast<int>(N), static_cast<int>(M), static_cast<int>(K), &alpha, b,
                    type, static_cast<int>(N), x, type, static_cast<int>(K), &beta, y, type, static_cast<int>(N),
                    kCompute32F, kGemmDefault) == 0;
  }

 private:
  static constexpr int kMaxDevices = 64;
  using CreateFn = int (*)(Handle*);
  using SetStreamFn = int (*)(Handle, cudaStream_t);
  using GemmExFn = int (*)(Handle, int, int, int, int, int, const void*, const void*, cudaDataType_t, int,
                           const void*, cudaDataType_t, int, const void*, void*, cudaDataType_t, int, int, int);

  bool open() {
    for (const char* name : {"libcublas.so.13", "libcublas.so.12", "libcublas.so"}) {
      lib_ = dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (lib_ != nullptr) break;
    }
    if (lib_ == nullptr) return false;
    create_ = reinterpret_cast<CreateFn>(dlsym(lib_, "cublasCreate_v2"));
    set_stream_ = reinterpret_cast<SetStreamFn>(dlsym(lib_, "cublasSetStream_v2"));
    gemm_ex_ = reinterpret_cast<GemmExFn>(dlsym(lib_, "cublasGemmEx"));
    return create_ != nullptr && set_stream_ != nullptr && gemm_ex_ != nullptr;
  }

  void* lib_ = nullptr;  // never closed: handles live until the process ends
  CreateFn create_ = nullptr;
  SetStreamFn set_stream_ = nullptr;
  GemmExFn gemm_ex_ = nullptr;
  std::mutex mutex_;
  Handle handles_[kMaxDevices] = {};
};

template <typename T>
constexpr cudaDataType_t cuda_type() {
  if constexpr (std::is_same_v<T, __half>) return CUDA_R_16F;
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return CUDA_R_16BF;
  return CUDA_R_32F;
}

// WINA_ONNX_CUDA_PDL=0: no programmatic dependent launches (a diagnostic switch, read once).
bool no_pdl() {
  static const bool off = [] {
    const char* v = std::getenv("WINA_ONNX_CUDA_PDL");
    return v != nullptr && v[0] == '0';
  }();
  return off;
}

// Calls fn with a value of the CUDA element type of `type`.
template <typename Fn>
void dispatch_type(ONNXTensorElementDataType type, Fn&& fn) {
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: fn(__half{}); break;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: fn(__nv_bfloat16{}); break;
    default: fn(float{}); break;
  }
}

// A problem P (cuda::Problem, cuda::NbitsProblem) of the call whose X, score scale, rule
// parameter and bias are those of `from` (a gated op's inputs, or another problem), with
// Y at y, a K x N weight (set by the caller) and the rule `gating`.
template <typename P, typename From>
P gated_problem(const From& from, void* y, int64_t K, int64_t N, Gating gating) {
  P p;
  p.x = from.x;
  p.score_scale = from.score_scale;
  p.threshold = from.threshold;
  p.k = from.k;
  p.bias = from.bias;
  p.y = y;
  p.M = from.M;
  p.K = K;
  p.N = N;
  p.gating = gating;
  return p;
}

template <typename T>
void run(const cuda::Problem& problem, const CudaCall& call) {
  const cuda::Stream stream = call.stream;
  cuda::Plan plan = cuda::MakePlan<T>(problem, call.device);
  if (no_pdl()) plan.pdl = false;
  Scratch scratch(call, cuda::WorkspaceBytes<T>(problem, plan));
  // Prefill without bias (the decoder projections): gated X by our kernel, product by cuBLAS.
  // fp32 is left to the SIMT GEMM, since cuBLAS's default fp32 mode may use TF32.
  Cublas* cublas = (!plan.decode && problem.bias == nullptr && problem.M > 0 && problem.N > 0 && problem.K > 0 &&
                    !std::is_same_v<T, float>)
                       ? Cublas::get()
                       : nullptr;
  if (cublas != nullptr) {
    const void* xg = nullptr;
    check_cuda(cuda::LaunchWinaGatedX<T>(problem, plan, scratch.get(), stream, &xg), "kernel launch");
    if (cublas->gemm(stream.get(), cuda_type<T>(), xg, problem.b, problem.y, problem.M, problem.K, problem.N)) return;
    // cuBLAS refused (no handle, an unsupported shape): the gated X is already there, but the
    // whole op is simply enqueued again on the built-in path (same result).
  }
  check_cuda(cuda::LaunchWinaSparseMatMul<T>(problem, plan, scratch.get(), stream), "kernel launch");
}

// WinaSparseMatMulNBits on the device: the fused 4-bit decode (after the top-k select for the
// top-k rule), or for more tokens the weight dequantized into scratch and the float path.
template <typename T>
void run(const cuda::NbitsProblem& p, const CudaCall& call) {
  const cuda::Stream stream = call.stream;
  cuda::NbitsPlan plan = cuda::MakeNbitsPlan<T>(p, call.device);
  if (no_pdl()) plan.pdl = false;
  // The same call with a float weight (top-k select, prefill).
  cuda::Problem fp = gated_problem<cuda::Problem>(p, p.y, p.K, p.N, p.gating);
  if (plan.decode) {
    const bool topk = p.gating == Gating::kTopK && p.M > 0 && p.K > 0 && p.N > 0;
    const size_t gate = topk ? cuda::gate_bytes(fp) : 0;
    Scratch scratch(call, gate + cuda::NbitsDecodeWorkspaceBytes<T>(p, plan));
    cuda::NbitsGate g;
    g.threshold = p.threshold;
    if (topk) {
      char* ws = static_cast<char*>(scratch.get());
      auto* keys = reinterpret_cast<uint32_t*>(ws);
      auto* cuts = reinterpret_cast<int32_t*>(ws + cuda::align_up(static_cast<size_t>(p.M) * 4));
      check_cuda(cuda::launch_select<T>(fp, keys, cuts, plan.pdl, stream), "kernel launch");
      g.keys = keys;
      g.cuts = cuts;
    }
    void* ws = gate > 0 ? static_cast<char*>(scratch.get()) + gate : scratch.get();
    check_cuda(cuda::LaunchNbitsDecode<T>(p, plan, g, ws, stream), "kernel launch");
    return;
  }
  // Prefill: the whole weight is read anyway (many tokens keep every row between them), so it
  // is dequantized once into scratch (stream-ordered: freed after the GEMM below has run).
  Scratch weight(call, static_cast<size_t>(p.K) * static_cast<size_t>(p.N) * sizeof(T));
  check_cuda(cuda::LaunchNbitsDequantize<T>(p, weight.get(), stream), "kernel launch");
  fp.b = weight.get();
  run<T>(fp, call);
}

// WinaSparseMatMulGroup on the device.
template <typename T>
void run(const cuda::GroupProblem& group, const CudaCall& call) {
  if (group.M > cuda::kMaxDecodeTokens) {
    // Prefill: each weight's masked X and GEMM in turn (the GEMMs dominate; grouping saves nothing there).
    for (int s = 0; s < group.count; ++s) run<T>(cuda::SegmentProblem(group, s), call);
    return;
  }
  // Decode: one kernel over every weight's columns, one reduction.
  cuda::Plan plan = cuda::MakeGroupPlan<T>(group, call.device);
  if (no_pdl()) plan.pdl = false;
  Scratch scratch(call, cuda::GroupWorkspaceBytes<T>(group, plan));
  check_cuda(cuda::LaunchWinaGroupDecode<T>(group, plan, scratch.get(), call.stream), "kernel launch");
}

// Runs `problem` (cuda::Problem, cuda::GroupProblem, cuda::NbitsProblem) for the CUDA element type of `type`.
template <typename P>
void run_as(ONNXTensorElementDataType type, const P& problem, const CudaCall& call) {
  dispatch_type(type, [&](auto tag) { run<decltype(tag)>(problem, call); });
}

cuda::ZeroPointKind zero_point_kind(NbitsZeroPoints kind) {
  switch (kind) {
    case kZeroPointsPacked: return cuda::ZeroPointKind::kPacked;
    case kZeroPointsFloat: return cuda::ZeroPointKind::kTyped;
    default: return cuda::ZeroPointKind::kNone;
  }
}

}  // namespace

CudaKernelBase::CudaKernelBase(const OrtKernelInfo* info, ONNXTensorElementDataType type) : type_(type) {
  const OrtApi& api = Ort::GetApi();
  throw_on_error(api.KernelInfoGetAllocator(info, OrtMemTypeDefault, &allocator_));
  throw_on_error(api.AllocatorGetInfo(allocator_, &memory_info_));
}

CudaKernelBase::~CudaKernelBase() {
  if (allocator_ != nullptr) Ort::GetApi().ReleaseAllocator(allocator_);
}

CudaCall CudaKernelBase::call(OrtKernelContext* context) {
  const cuda::Stream stream(static_cast<cudaStream_t>(Ort::KernelContext(context).GetGPUComputeStream()));
  if (!stream.valid()) throw std::runtime_error("ONNX Runtime gave no CUDA compute stream for this node");
  return {context, memory_info_, allocator_, stream, device()};
}

cuda::DeviceInfo CudaKernelBase::device() {
  std::call_once(device_once_, [this] {
    int device = 0;
    check_cuda(cudaGetDevice(&device), "cudaGetDevice");
    check_cuda(cudaDeviceGetAttribute(&device_.sm_count, cudaDevAttrMultiProcessorCount, device),
               "cudaDeviceGetAttribute");
    check_cuda(cudaDeviceGetAttribute(&device_.cc_major, cudaDevAttrComputeCapabilityMajor, device),
               "cudaDeviceGetAttribute");
  });
  return device_;
}

void WinaSparseMatMulCudaKernel::Compute(OrtKernelContext* context) {
  Ort::KernelContext ctx(context);
  const OpInputs in = read_op_inputs(ctx, type_, attrs_);
  void* y = ctx.GetOutput(0, in.out_shape).GetTensorMutableRawData();
  cuda::Problem problem = gated_problem<cuda::Problem>(in, y, in.K, in.N, attrs_);
  problem.b = in.b;
  run_as(type_, problem, call(context));
}

void WinaSparseMatMulGroupCudaKernel::Compute(OrtKernelContext* context) {
  Ort::KernelContext ctx(context);
  const GroupInputs in = read_group_inputs(ctx, type_);
  cuda::GroupProblem group;
  group.x = in.x;
  group.M = in.M;
  group.K = in.K;
  group.count = static_cast<int>(in.b.size());
  for (int s = 0; s < group.count; ++s) {
    std::vector<int64_t> shape = in.out_prefix;
    shape.push_back(in.n[s]);
    cuda::Segment& w = group.segments[s];
    w.b = in.b[s];
    w.score_scale = in.score_scale + static_cast<int64_t>(s) * in.K;
    w.threshold = in.threshold + s;
    w.bias = in.bias.empty() ? nullptr : in.bias[s];
    w.y = ctx.GetOutput(static_cast<size_t>(s), shape).GetTensorMutableRawData();
    w.N = in.n[s];
  }
  run_as(type_, group, call(context));
}

void WinaSparseMatMulNBitsCudaKernel::Compute(OrtKernelContext* context) {
  Ort::KernelContext ctx(context);
  const NBitsInputs in = read_nbits_inputs(ctx, type_, attrs_);
  void* y = ctx.GetOutput(0, in.out_shape).GetTensorMutableRawData();
  cuda::NbitsProblem problem = gated_problem<cuda::NbitsProblem>(in, y, attrs_.K, attrs_.N, attrs_.gating);
  problem.b = in.b;
  problem.scales = in.scales;
  problem.zero_points = in.zero_points;
  problem.zero_kind = zero_point_kind(in.zero_kind);
  problem.block_size = attrs_.block_size;
  run_as(type_, problem, call(context));
}

}  // namespace wina

#include "cuda/wina_sparse_matmul_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

#include "cuda/wina_sparse_matmul_impl.cuh"

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

// Scratch from ORT's CUDA allocator, tied to the compute stream; returned at scope exit
// (ORT's arena hands it out again only in stream order, after this node's kernels).
class Scratch {
 public:
  Scratch(OrtKernelContext* context, const OrtMemoryInfo* info, OrtAllocator* allocator, size_t bytes)
      : allocator_(allocator) {
    if (bytes > 0) throw_on_error(Ort::GetApi().KernelContext_GetScratchBuffer(context, info, bytes, &ptr_));
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

template <typename T>
void run(const cuda::Problem& problem, const cuda::DeviceInfo& device, OrtKernelContext* context,
         const OrtMemoryInfo* info, OrtAllocator* allocator, cuda::Stream stream) {
  // WINA_ONNX_CUDA_PDL=0: no programmatic dependent launches (a diagnostic switch, read once).
  static const bool no_pdl = [] {
    const char* v = std::getenv("WINA_ONNX_CUDA_PDL");
    return v != nullptr && v[0] == '0';
  }();
  cuda::Plan plan = cuda::MakePlan<T>(problem, device);
  if (no_pdl) plan.pdl = false;
  Scratch scratch(context, info, allocator, cuda::WorkspaceBytes<T>(problem, plan));
  check_cuda(cuda::LaunchWinaSparseMatMul<T>(problem, plan, scratch.get(), stream), "kernel launch");
}

}  // namespace

WinaSparseMatMulCudaKernel::WinaSparseMatMulCudaKernel(const OrtKernelInfo* info, ONNXTensorElementDataType type)
    : type_(type), gating_(Gating::kTopK) {
  NodeConfig config = read_node_config(info);
  gating_ = config.gating;
  node_ = std::move(config.node);
  const OrtApi& api = Ort::GetApi();
  throw_on_error(api.KernelInfoGetAllocator(info, OrtMemTypeDefault, &allocator_));
  throw_on_error(api.AllocatorGetInfo(allocator_, &memory_info_));
}

WinaSparseMatMulCudaKernel::~WinaSparseMatMulCudaKernel() {
  if (allocator_ != nullptr) Ort::GetApi().ReleaseAllocator(allocator_);
}

OrtStatusPtr WinaSparseMatMulCudaKernel::ComputeV2(OrtKernelContext* context) {
  try {
    Compute(context);
    return nullptr;
  } catch (...) {
    return status_from_current_exception(node_);
  }
}

void WinaSparseMatMulCudaKernel::Compute(OrtKernelContext* context) {
  Ort::KernelContext ctx(context);
  const OpInputs in = read_op_inputs(ctx, type_, gating_);
  auto y = ctx.GetOutput(0, in.out_shape);

  const cuda::Stream stream(static_cast<cudaStream_t>(ctx.GetGPUComputeStream()));
  if (!stream.valid()) throw std::runtime_error("ONNX Runtime gave no CUDA compute stream for this node");

  std::call_once(device_once_, [this] {
    int device = 0;
    check_cuda(cudaGetDevice(&device), "cudaGetDevice");
    check_cuda(cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
    check_cuda(cudaDeviceGetAttribute(&cc_major_, cudaDevAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute");
  });
  cuda::DeviceInfo device;
  device.sm_count = sm_count_;
  device.cc_major = cc_major_;

  cuda::Problem problem;
  problem.x = in.x;
  problem.b = in.b;
  problem.score_scale = in.score_scale;
  problem.threshold = in.threshold;
  problem.k = in.k;
  problem.bias = in.bias;
  problem.y = y.GetTensorMutableRawData();
  problem.M = in.M;
  problem.K = in.K;
  problem.N = in.N;
  problem.mode = gating_ == Gating::kTopK ? cuda::GateMode::kTopK : cuda::GateMode::kThreshold;

  switch (type_) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16:
      run<__half>(problem, device, context, memory_info_, allocator_, stream);
      break;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16:
      run<__nv_bfloat16>(problem, device, context, memory_info_, allocator_, stream);
      break;
    default:
      run<float>(problem, device, context, memory_info_, allocator_, stream);
      break;
  }
}

OrtStatusPtr WinaSparseMatMulCudaOp::CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info,
                                                    void** kernel) const {
  try {
    *kernel = new WinaSparseMatMulCudaKernel(info, type_);
    return nullptr;
  } catch (const InvalidArgument& e) {
    return api.CreateStatus(ORT_INVALID_ARGUMENT, e.what());
  } catch (const Ort::Exception& e) {
    return api.CreateStatus(e.GetOrtErrorCode(), (std::string(kOpType) + ": " + e.what()).c_str());
  } catch (const std::exception& e) {
    return api.CreateStatus(ORT_FAIL, (std::string(kOpType) + ": " + e.what()).c_str());
  }
}

}  // namespace wina

// Entry point of libwina_onnx_ops.so: ONNX Runtime calls RegisterCustomOps when the
// library is registered on a SessionOptions (register_custom_ops_library).
// It is the only symbol the library exports (cmake/exports.map).
#include <mutex>

#include "wina_sparse_matmul.h"
#include "wina_sparse_matmul_group.h"
#ifdef WINA_ONNX_WITH_CUDA
#include "cuda/wina_sparse_matmul_cuda.h"
#endif

namespace {

// Oldest API whose functions this library uses (KernelContext_ParallelFor: 1.17).
constexpr uint32_t kMinApiVersion = 17;

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) api = api_base->GetApi(kMinApiVersion);
  if (api == nullptr) {
    const OrtApi* oldest = api_base->GetApi(1);
    return oldest->CreateStatus(ORT_FAIL,
                                "libwina_onnx_ops needs ONNX Runtime 1.17 or newer; this one is older");
  }
  static std::once_flag init_once;
  std::call_once(init_once, [api] { Ort::InitApi(api); });

  // One op object per element type, all named WinaSparseMatMul: ORT merges them
  // and picks the kernel by the type of X. They live as long as the process.
  static wina::WinaSparseMatMulOp op_float(ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
  static wina::WinaSparseMatMulOp op_float16(ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16);
  static wina::WinaSparseMatMulOp op_bfloat16(ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16);
  using CpuGroupOp = wina::WinaSparseMatMulGroupOp<wina::WinaSparseMatMulGroupKernel>;
  static CpuGroupOp group_float(ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "CPUExecutionProvider");
  static CpuGroupOp group_float16(ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, "CPUExecutionProvider");
  static CpuGroupOp group_bfloat16(ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16, "CPUExecutionProvider");

  try {
    Ort::CustomOpDomain domain(wina::kDomain);
    domain.Add(&op_float);
    domain.Add(&op_float16);
    domain.Add(&op_bfloat16);
    domain.Add(&group_float);
    domain.Add(&group_float16);
    domain.Add(&group_bfloat16);
#ifdef WINA_ONNX_WITH_CUDA
    // The same op for the CUDA execution provider; a session without it never creates
    // these kernels, so nothing of CUDA runs (or must be installed) on a CPU-only machine.
    static wina::WinaSparseMatMulCudaOp cuda_float(ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
    static wina::WinaSparseMatMulCudaOp cuda_float16(ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16);
    static wina::WinaSparseMatMulCudaOp cuda_bfloat16(ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16);
    using CudaGroupOp = wina::WinaSparseMatMulGroupOp<wina::WinaSparseMatMulGroupCudaKernel>;
    static CudaGroupOp cuda_group_float(ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "CUDAExecutionProvider");
    static CudaGroupOp cuda_group_float16(ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, "CUDAExecutionProvider");
    static CudaGroupOp cuda_group_bfloat16(ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16, "CUDAExecutionProvider");
    if (api_base->GetApi(wina::kMinCudaApiVersion) != nullptr) {
      domain.Add(&cuda_float);
      domain.Add(&cuda_float16);
      domain.Add(&cuda_bfloat16);
      domain.Add(&cuda_group_float);
      domain.Add(&cuda_group_float16);
      domain.Add(&cuda_group_bfloat16);
    }
#endif
    Ort::UnownedSessionOptions(options).Add(domain);
    // The session options refer to the domain until they and every session made
    // from them are gone; nothing tells us when, so the small domain object is
    // kept for the life of the process.
    (void)domain.release();
  } catch (const Ort::Exception& e) {
    return api->CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}

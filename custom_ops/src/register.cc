// Entry point of libwina_onnx_ops.so: ONNX Runtime calls RegisterCustomOps when the
// library is registered on a SessionOptions (register_custom_ops_library).
// It is the only symbol the library exports (cmake/exports.map).
#include <mutex>

#include "wina_sparse_matmul.h"
#include "wina_sparse_matmul_group.h"
#include "wina_sparse_matmul_nbits.h"
#ifdef WINA_ONNX_WITH_CUDA
#include "cuda/wina_sparse_matmul_cuda.h"
#endif

namespace {

// Oldest API whose functions this library uses (KernelContext_ParallelFor: 1.17).
constexpr uint32_t kMinApiVersion = 17;

// Adds the op of kernel class Kernel to the domain, one op object per element type, all
// with the same name: ORT merges them and picks the kernel by the type of X. They live as
// long as the process.
template <typename Kernel>
void add_op(Ort::CustomOpDomain& domain) {
  using Op = wina::CustomOp<typename Kernel::Schema, Kernel>;
  static Op ops[] = {Op(ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT), Op(ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16),
                     Op(ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16)};
  for (Op& op : ops) domain.Add(&op);
}

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

  try {
    Ort::CustomOpDomain domain(wina::kDomain);
    add_op<wina::WinaSparseMatMulKernel>(domain);
    add_op<wina::WinaSparseMatMulGroupKernel>(domain);
    add_op<wina::WinaSparseMatMulNBitsKernel>(domain);
#ifdef WINA_ONNX_WITH_CUDA
    // The same ops for the CUDA execution provider; a session without it never creates
    // these kernels, so nothing of CUDA runs (or must be installed) on a CPU-only machine.
    if (api_base->GetApi(wina::kMinCudaApiVersion) != nullptr) {
      add_op<wina::WinaSparseMatMulCudaKernel>(domain);
      add_op<wina::WinaSparseMatMulGroupCudaKernel>(domain);
      add_op<wina::WinaSparseMatMulNBitsCudaKernel>(domain);
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

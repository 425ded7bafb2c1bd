// The WinaSparseMatMul, WinaSparseMatMulGroup and WinaSparseMatMulNBits custom ops for the CUDA
// execution provider.
//
// Same schema (op_schema.h), validation and error messages as the CPU op (wina_sparse_matmul.h);
// every input, threshold and k included, stays in device memory, so top-k never
// goes through the host. The work is enqueued on ORT's compute stream
// (KernelContext_GetGPUComputeStream) by the launchers of launchers.cuh,
// with scratch from ORT's CUDA allocator (stream-ordered, so freed right after).
#pragma once

#include <mutex>
#include <string>

#include "cuda/plan.h"
#include "wina_sparse_matmul.h"
#include "wina_sparse_matmul_group.h"
#include "wina_sparse_matmul_nbits.h"

namespace wina {

struct CudaCall;  // where one call's work goes (wina_sparse_matmul_cuda.cc)

// What the CUDA kernels hold: the element type, the CUDA EP's allocator for scratch, the
// device's SM count and compute capability (read at the first call, on the device ORT runs
// the node on).
class CudaKernelBase {
 public:
  static constexpr const char* kProvider = "CUDAExecutionProvider";
  CudaKernelBase(const OrtKernelInfo* info, ONNXTensorElementDataType type);
  ~CudaKernelBase();
  CudaKernelBase(const CudaKernelBase&) = delete;
  CudaKernelBase& operator=(const CudaKernelBase&) = delete;

 protected:
  CudaCall call(OrtKernelContext* context);  // the compute stream, scratch, the device
  cuda::DeviceInfo device();                 // read once

  ONNXTensorElementDataType type_;
  OrtAllocator* allocator_ = nullptr;            // the CUDA EP's allocator (frees the scratch)
  const OrtMemoryInfo* memory_info_ = nullptr;   // owned by allocator_
  std::once_flag device_once_;
  cuda::DeviceInfo device_;
};

class WinaSparseMatMulCudaKernel final : public OpKernel<SparseMatMulSchema, CudaKernelBase> {
  using OpKernel::OpKernel;  // public, as the base's constructor
  void Compute(OrtKernelContext* context) override;
};

class WinaSparseMatMulGroupCudaKernel final : public OpKernel<SparseMatMulGroupSchema, CudaKernelBase> {
  using OpKernel::OpKernel;
  void Compute(OrtKernelContext* context) override;
};

// WinaSparseMatMulNBits (4-bit weights): up to kNbitsMaxDecodeTokens tokens through the fused
// 4-bit decode kernel (nbits_decode.cuh) after the float op's top-k select where the rule is
// top-k; more tokens dequantize the weight into scratch and take the float op's prefill path.
class WinaSparseMatMulNBitsCudaKernel final : public OpKernel<NBitsSchema, CudaKernelBase> {
  using OpKernel::OpKernel;
  void Compute(OrtKernelContext* context) override;
};

// Oldest ORT API the CUDA kernels need (KernelContext_GetScratchBuffer, KernelInfoGetAllocator).
inline constexpr uint32_t kMinCudaApiVersion = 18;

}  // namespace wina

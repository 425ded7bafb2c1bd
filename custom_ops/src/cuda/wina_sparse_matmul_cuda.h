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

// What both CUDA kernels hold: the element type, the CUDA EP's allocator for scratch, the
// device's SM count and compute capability (read at the first call, on the device ORT runs
// the node on).
class CudaKernelBase {
 public:
  static constexpr const char* kProvider = "CUDAExecutionProvider";
  CudaKernelBase(const OrtKernelInfo* info, std::string node, ONNXTensorElementDataType type);
  virtual ~CudaKernelBase();
  CudaKernelBase(const CudaKernelBase&) = delete;
  CudaKernelBase& operator=(const CudaKernelBase&) = delete;

  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 protected:
  virtual void Compute(OrtKernelContext* context) = 0;
  cuda::DeviceInfo device();  // read once

  std::string node_;
  ONNXTensorElementDataType type_;
  OrtAllocator* allocator_ = nullptr;            // the CUDA EP's allocator (frees the scratch)
  const OrtMemoryInfo* memory_info_ = nullptr;   // owned by allocator_
  std::once_flag device_once_;
  cuda::DeviceInfo device_;
};

class WinaSparseMatMulCudaKernel : public CudaKernelBase {
 public:
  WinaSparseMatMulCudaKernel(const OrtKernelInfo* info, ONNXTensorElementDataType type);

 private:
  void Compute(OrtKernelContext* context) override;

  Gating gating_;
};

class WinaSparseMatMulGroupCudaKernel : public CudaKernelBase {
 public:
  WinaSparseMatMulGroupCudaKernel(const OrtKernelInfo* info, ONNXTensorElementDataType type);

 private:
  void Compute(OrtKernelContext* context) override;
};

// WinaSparseMatMulNBits (4-bit weights): up to kNbitsMaxDecodeTokens tokens through the fused
// 4-bit decode kernel (nbits_decode.cuh) after the float op's top-k select where the rule is
// top-k; more tokens dequantize the weight into scratch and take the float op's prefill path.
class WinaSparseMatMulNBitsCudaKernel : public CudaKernelBase {
 public:
  WinaSparseMatMulNBitsCudaKernel(const OrtKernelInfo* info, ONNXTensorElementDataType type);

 private:
  void Compute(OrtKernelContext* context) override;

  NBitsAttributes attrs_;
};

// Oldest ORT API the CUDA kernels need (KernelContext_GetScratchBuffer, KernelInfoGetAllocator).
inline constexpr uint32_t kMinCudaApiVersion = 18;

}  // namespace wina

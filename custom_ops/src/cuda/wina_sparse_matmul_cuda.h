// The WinaSparseMatMul custom op for the CUDA execution provider.
//
// Same schema, validation and error messages as the CPU op (wina_sparse_matmul.h);
// every input, threshold and k included, stays in device memory, so top-k never
// goes through the host. The work is enqueued on ORT's compute stream
// (KernelContext_GetGPUComputeStream) by the launchers of wina_sparse_matmul_impl.cuh,
// with scratch from ORT's CUDA allocator (stream-ordered, so freed right after).
#pragma once

#include <mutex>
#include <string>

#include "wina_sparse_matmul.h"
#include "wina_sparse_matmul_group.h"

namespace wina {

// What both CUDA kernels hold: the CUDA EP's allocator for scratch, the device's SM count
// and compute capability (read at the first call, on the device ORT runs the node on).
class CudaKernelBase {
 public:
  CudaKernelBase(const OrtKernelInfo* info, std::string node);
  virtual ~CudaKernelBase();
  CudaKernelBase(const CudaKernelBase&) = delete;
  CudaKernelBase& operator=(const CudaKernelBase&) = delete;

  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 protected:
  virtual void Compute(OrtKernelContext* context) = 0;
  void read_device();  // once

  std::string node_;
  OrtAllocator* allocator_ = nullptr;            // the CUDA EP's allocator (frees the scratch)
  const OrtMemoryInfo* memory_info_ = nullptr;   // owned by allocator_
  std::once_flag device_once_;
  int sm_count_ = 0;
  int cc_major_ = 0;
};

class WinaSparseMatMulCudaKernel : public CudaKernelBase {
 public:
  WinaSparseMatMulCudaKernel(const OrtKernelInfo* info, ONNXTensorElementDataType type);

 private:
  WinaSparseMatMulCudaKernel(const OrtKernelInfo* info, ONNXTensorElementDataType type, NodeConfig config);
  void Compute(OrtKernelContext* context) override;

  ONNXTensorElementDataType type_;
  Gating gating_;
};

class WinaSparseMatMulGroupCudaKernel : public CudaKernelBase {
 public:
  WinaSparseMatMulGroupCudaKernel(const OrtKernelInfo* info, ONNXTensorElementDataType type);

 private:
  void Compute(OrtKernelContext* context) override;

  ONNXTensorElementDataType type_;
};

struct WinaSparseMatMulCudaOp
    : Ort::CustomOpBase<WinaSparseMatMulCudaOp, WinaSparseMatMulCudaKernel, /*WithStatus=*/true> {
  explicit WinaSparseMatMulCudaOp(ONNXTensorElementDataType type) : type_(type) {}

  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const;

  const char* GetName() const { return kOpType; }
  const char* GetExecutionProviderType() const { return "CUDAExecutionProvider"; }

  size_t GetInputTypeCount() const { return kNumInputs; }
  ONNXTensorElementDataType GetInputType(size_t index) const { return op_input_type(type_, index); }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return op_input_characteristic(index);
  }

  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t /*index*/) const { return type_; }

 private:
  ONNXTensorElementDataType type_;
};

// Oldest ORT API the CUDA kernels need (KernelContext_GetScratchBuffer, KernelInfoGetAllocator).
inline constexpr uint32_t kMinCudaApiVersion = 18;

}  // namespace wina

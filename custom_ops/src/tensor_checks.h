// Reading and checking the input tensors of a kernel call, shared by the ops of the
// library: each failed check throws InvalidArgument with a message naming the input.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include "isa/isa.h"
#include "ort_api.h"

namespace wina {

// A problem with the node's inputs or attributes; becomes ORT_INVALID_ARGUMENT.
struct InvalidArgument : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Inside a catch block: the current exception as an OrtStatus, prefixed with `node`
// (InvalidArgument becomes ORT_INVALID_ARGUMENT).
OrtStatusPtr status_from_current_exception(const std::string& node);

// One input of the call: absent (optional input given as "") or a tensor.
struct InputView {
  Ort::ConstValue value{nullptr};
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> shape;
  int64_t elements = 0;
  bool present() const { return static_cast<const OrtValue*>(value) != nullptr; }
};

// The input at `index`; `label` ("input 'B' (index 1)") names it in errors.
InputView read_input(Ort::KernelContext& ctx, size_t index, const std::string& label);
void expect_type(const InputView& in, const std::string& label, ONNXTensorElementDataType want, const char* why);
void expect_scalar(const InputView& in, const std::string& label);

std::string shape_str(const std::vector<int64_t>& shape);
const char* type_name(ONNXTensorElementDataType t);
ONNXTensorElementDataType onnx_type(DType dt);
DType dtype_of(ONNXTensorElementDataType t);

// Tokens of X [..., K] flattened to [M, K] (also when K == 0).
int64_t token_count(const InputView& x);

// ORT's intra-op thread pool, as sparse_kernel.h's ParallelRunner wants it.
void parallel_run(void* context, void (*fn)(void*, size_t), size_t total, void* data);

}  // namespace wina

// Reading and checking the input tensors of a kernel call, shared by the ops of the
// library: each failed check throws InvalidArgument with a message naming the input.
#pragma once

#include <initializer_list>
#include <stdexcept>
#include <string>
#include <vector>

#include "gating.h"
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
  size_t index = 0;
  std::string name;  // as the op's schema names it ("B", "B_0")
  bool present() const { return static_cast<const OrtValue*>(value) != nullptr; }
  // "input 'B' (index 1)": how errors name the input.
  std::string label() const;
};

// The input at `index`, named `name` in errors (absent past the node's inputs).
InputView read_input(Ort::KernelContext& ctx, size_t index, std::string name);
// A present tensor `value` as the input at `index` named `name` (an initializer read when
// a kernel is created, or an input of the call).
InputView tensor_view(Ort::ConstValue value, size_t index, std::string name);
// Throws InvalidArgument naming all of `inputs` ("inputs 'X', 'B' and 'score_scale' are
// required") unless each is present.
void expect_present(std::initializer_list<const InputView*> inputs);
void expect_type(const InputView& in, ONNXTensorElementDataType want, const char* why);
void expect_scalar(const InputView& in);

// "a, b and c" (last = " and ").
std::string join_words(const std::vector<std::string>& words, const char* last);
std::string shape_str(const std::vector<int64_t>& shape);
const char* type_name(ONNXTensorElementDataType t);
ONNXTensorElementDataType onnx_type(DType dt);
DType dtype_of(ONNXTensorElementDataType t);

// Tokens of X [..., K] flattened to [M, K] (also when K == 0).
int64_t token_count(const InputView& x);

// What every gated op (WinaSparseMatMul, WinaSparseMatMulNBits) reads besides its weight,
// validated. Pointers are where ORT put the tensors: host memory for a CPU kernel, device
// memory for a CUDA kernel (threshold and k included).
struct GatedInputs {
  const void* x = nullptr;
  const float* score_scale = nullptr;
  const float* threshold = nullptr;  // set for rules with GatingParam::kThreshold
  const int64_t* k = nullptr;        // set for rules with GatingParam::kK
  const void* bias = nullptr;        // or nullptr
  std::vector<int64_t> out_shape;    // [..., N]
  int64_t M = 0;
  int device_id = 0;                 // of X's memory
};

// Sets in->threshold or in->k from `param`, the scalar input that `rule` reads; throws
// InvalidArgument when it is absent, of the wrong type or not a scalar.
void read_gating_param(const InputView& param, const GatingRule& rule, GatedInputs* in);

// Sets the rest of `in` from the checked X [..., K], score scale and bias (absent or [N]).
void set_gated_inputs(const InputView& x, const InputView& score_scale, const InputView& bias, int64_t N,
                      GatedInputs* in);

// ORT's intra-op thread pool, as sparse_kernel.h's ParallelRunner wants it.
void parallel_run(void* context, void (*fn)(void*, size_t), size_t total, void* data);

}  // namespace wina

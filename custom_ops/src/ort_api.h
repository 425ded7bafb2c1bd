// The ONNX Runtime C++ API, set up for a custom-op library: the global API
// pointer is initialised by RegisterCustomOps (Ort::InitApi), not at load time.
#pragma once

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

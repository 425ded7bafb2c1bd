# Hook for the CUDA kernels of WinaSparseMatMul. Not implemented yet: the option is
# accepted and reported, and the library is built for the CPU execution provider
# only, so turning it on never breaks the build.
find_program(WINA_NVCC_EXECUTABLE nvcc)
if(WINA_NVCC_EXECUTABLE)
  set(_wina_cuda_default ON)
else()
  set(_wina_cuda_default OFF)
endif()
option(WINA_ONNX_CUDA "Build the CUDA kernels of WinaSparseMatMul (not implemented yet)" ${_wina_cuda_default})
if(WINA_ONNX_CUDA)
  message(STATUS "wina_onnx: WINA_ONNX_CUDA=ON (nvcc: ${WINA_NVCC_EXECUTABLE}), but the CUDA kernels "
                 "are not implemented yet; building the CPU kernels only")
else()
  message(STATUS "wina_onnx: WINA_ONNX_CUDA=OFF; CPU kernels only")
endif()

# CUDA kernels of WinaSparseMatMul (src/cuda/), for ONNX Runtime's CUDA execution provider.
#
# WINA_ONNX_CUDA defaults to ON when nvcc is found (CUDACXX, CUDA_HOME/bin, CUDA_PATH/bin,
# /usr/local/cuda/bin or PATH). Targets: CMAKE_CUDA_ARCHITECTURES, by default sm_80
# machine code and sm_90 machine code plus its PTX (which newer GPUs compile at load).
#
# The library must still load where no CUDA is installed (CPU-only users and CI), so
# the CUDA runtime is linked statically (CUDA::cudart_static) and nothing else of
# CUDA is linked; the driver (libcuda.so) is opened by the runtime only when a CUDA
# kernel first runs. The version script (exports.cmake) keeps the runtime's symbols
# hidden. Kernels launch only through the launcher helper that takes ORT's stream:
# the triple-chevron launch syntax is refused in src/cuda at configure time.
#
#   wina_add_cuda_kernels(<target>)   adds the kernels to <target> when WINA_ONNX_CUDA is ON
set(_wina_cuda_hints "")
foreach(_var CUDA_HOME CUDA_PATH)
  if(DEFINED ENV{${_var}})
    list(APPEND _wina_cuda_hints "$ENV{${_var}}/bin")
  endif()
endforeach()
if(DEFINED ENV{CUDACXX})
  set(WINA_NVCC_EXECUTABLE "$ENV{CUDACXX}" CACHE FILEPATH "nvcc used for the CUDA kernels")
endif()
find_program(WINA_NVCC_EXECUTABLE nvcc HINTS ${_wina_cuda_hints} PATHS /usr/local/cuda/bin)
if(WINA_NVCC_EXECUTABLE)
  set(_wina_cuda_default ON)
else()
  set(_wina_cuda_default OFF)
endif()
option(WINA_ONNX_CUDA "Build the CUDA kernels of WinaSparseMatMul" ${_wina_cuda_default})
# Source lines in the machine code, for compute-sanitizer and ncu (the code is the same,
# the library about three times larger).
option(WINA_ONNX_CUDA_LINEINFO "Build the CUDA kernels with -lineinfo" OFF)

if(WINA_ONNX_CUDA)
  if(NOT WINA_NVCC_EXECUTABLE AND NOT CMAKE_CUDA_COMPILER)
    message(FATAL_ERROR "wina_onnx: WINA_ONNX_CUDA=ON but nvcc was not found; set CUDACXX or CMAKE_CUDA_COMPILER")
  endif()
  if(NOT CMAKE_CUDA_COMPILER)
    set(CMAKE_CUDA_COMPILER "${WINA_NVCC_EXECUTABLE}")
  endif()
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES 80-real 90)
  endif()
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)

  file(GLOB _wina_cuda_files "${CMAKE_CURRENT_SOURCE_DIR}/src/cuda/*")
  foreach(_file IN LISTS _wina_cuda_files)
    file(STRINGS "${_file}" _wina_chevrons REGEX "<<<")
    if(_wina_chevrons)
      message(FATAL_ERROR "wina_onnx: ${_file} uses the <<<...>>> launch syntax; launch kernels through "
                          "launch() in src/cuda/common.cuh, which takes ORT's stream")
    endif()
  endforeach()
  message(STATUS "wina_onnx: WINA_ONNX_CUDA=ON (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, "
                 "architectures ${CMAKE_CUDA_ARCHITECTURES}, runtime linked statically)")
else()
  message(STATUS "wina_onnx: WINA_ONNX_CUDA=OFF; CPU kernels only")
endif()

function(wina_add_cuda_kernels target)
  if(NOT WINA_ONNX_CUDA)
    return()
  endif()
  set(_dir "${CMAKE_CURRENT_SOURCE_DIR}/src/cuda")
  # The kernels, their launchers and the host-only plan selection (no ONNX Runtime in them).
  add_library(wina_cuda_kernels OBJECT
    "${_dir}/launchers.cu"
    "${_dir}/decode.cu"
    "${_dir}/prefill.cu"
    "${_dir}/topk_select.cu"
    "${_dir}/nbits_decode.cu"
    "${_dir}/plan.cc")
  target_include_directories(wina_cuda_kernels PRIVATE "${CMAKE_CURRENT_SOURCE_DIR}/src")
  set_target_properties(wina_cuda_kernels PROPERTIES
    CUDA_RUNTIME_LIBRARY None
    CUDA_SEPARABLE_COMPILATION OFF
    CUDA_VISIBILITY_PRESET hidden)
  target_compile_options(wina_cuda_kernels PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-O3 -Xcompiler=-Wall>
    $<$<COMPILE_LANGUAGE:CXX>:-O3 -Wall -Wextra>)
  if(WINA_ONNX_CUDA_LINEINFO)
    target_compile_options(wina_cuda_kernels PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-lineinfo>)
  endif()

  # The ORT kernel (host C++) and the kernels go into the op library.
  target_sources(${target} PRIVATE "${_dir}/wina_sparse_matmul_cuda.cc" $<TARGET_OBJECTS:wina_cuda_kernels>)
  target_compile_definitions(${target} PRIVATE WINA_ONNX_WITH_CUDA=1)
  target_include_directories(${target} PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
  set_target_properties(${target} PROPERTIES LINKER_LANGUAGE CXX CUDA_RUNTIME_LIBRARY None)
  target_link_libraries(${target} PRIVATE CUDA::cudart_static ${CMAKE_DL_LIBS})  # dlopen of cuBLAS

  # Stand-alone check and timing of the launchers, built only on request:
  #   cmake --build <build dir> --target wina_cuda_launcher_bench
  add_executable(wina_cuda_launcher_bench EXCLUDE_FROM_ALL
    "${_dir}/tools/launcher_bench.cu" $<TARGET_OBJECTS:wina_cuda_kernels>)
  target_include_directories(wina_cuda_launcher_bench PRIVATE "${CMAKE_CURRENT_SOURCE_DIR}/src")
  set_target_properties(wina_cuda_launcher_bench PROPERTIES CUDA_RUNTIME_LIBRARY Static)
  target_compile_options(wina_cuda_launcher_bench PRIVATE -O3)

  # The same for the 4-bit decode and dequantization launchers (WinaSparseMatMulNBits):
  #   cmake --build <build dir> --target wina_cuda_nbits_bench
  add_executable(wina_cuda_nbits_bench EXCLUDE_FROM_ALL
    "${_dir}/tools/nbits_bench.cu" $<TARGET_OBJECTS:wina_cuda_kernels>)
  target_include_directories(wina_cuda_nbits_bench PRIVATE "${CMAKE_CURRENT_SOURCE_DIR}/src")
  set_target_properties(wina_cuda_nbits_bench PROPERTIES CUDA_RUNTIME_LIBRARY Static)
  target_compile_options(wina_cuda_nbits_bench PRIVATE -O3)
endfunction()

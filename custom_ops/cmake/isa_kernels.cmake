# The inner loops are compiled once per instruction set from one source
# (src/isa/kernels_impl.h) and chosen at run time (src/isa/isa_dispatch.cc), so the
# wheel runs on any x86-64 CPU and uses AVX2/FMA/F16C or AVX-512 where present.
# Never -march=native: the library must run on other machines than the build's.
set(_isa_dir "${CMAKE_CURRENT_SOURCE_DIR}/src/isa")
set(WINA_ISA_DEFINITIONS "")

if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64|i[3-6]86)$")
  add_library(wina_isa_kernels OBJECT
    "${_isa_dir}/isa_generic.cc"
    "${_isa_dir}/isa_avx2.cc"
    "${_isa_dir}/isa_avx512.cc")
  set_source_files_properties("${_isa_dir}/isa_avx2.cc" PROPERTIES
    COMPILE_OPTIONS "-mavx2;-mfma;-mf16c")
  set_source_files_properties("${_isa_dir}/isa_avx512.cc" PROPERTIES
    COMPILE_OPTIONS "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mfma;-mf16c;-mprefer-vector-width=512")
  list(APPEND WINA_ISA_DEFINITIONS WINA_HAVE_X86_ISA_KERNELS=1)
else()
  add_library(wina_isa_kernels OBJECT "${_isa_dir}/isa_generic.cc")
endif()
target_include_directories(wina_isa_kernels PRIVATE "${CMAKE_CURRENT_SOURCE_DIR}/src")
# -fno-trapping-math lets the conversions vectorise; no -ffast-math: NaN and inf
# must propagate as in the reference.
# GCC 12 warns about the intentionally undefined pass-through of some AVX-512
# intrinsics (-Wmaybe-uninitialized); it is a false positive.
target_compile_options(wina_isa_kernels PRIVATE -O3 -fno-trapping-math -Wall -Wextra -Wno-maybe-uninitialized)

// WinaSparseMatMul inner loops for AVX2 + FMA + F16C (x86-64-v3).
// CMake compiles this file with the matching -m flags (cmake/isa_kernels.cmake).
#define WINA_TILE_STRIDE 6
#define WINA_TILE_NV 2
#include "kernels_impl.h"

WINA_DEFINE_ISA_TABLE(isa_kernels_avx2, "avx2")

// WinaSparseMatMul inner loops for AVX-512 F/BW/VL/DQ (x86-64-v4).
// CMake compiles this file with the matching -m flags (cmake/isa_kernels.cmake).
#define WINA_TILE_STRIDE 8
#define WINA_TILE_NV 3
#include "kernels_impl.h"

WINA_DEFINE_ISA_TABLE(isa_kernels_avx512, "avx512")

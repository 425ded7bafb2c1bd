// WinaSparseMatMul inner loops for SSE2 only: runs on every x86-64 CPU.
// CMake compiles this file with the matching -m flags (cmake/isa_kernels.cmake).
#define WINA_TILE_STRIDE 4
#define WINA_TILE_NV 3
#include "kernels_impl.h"

WINA_DEFINE_ISA_TABLE(isa_kernels_generic, "generic")

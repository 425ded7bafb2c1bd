// Runtime choice of the inner-loop table: the widest instruction set this CPU
// (and its operating system) supports, optionally capped by WINA_ONNX_ISA.
#include <cstdlib>
#include <cstring>

#include "isa.h"

namespace wina {

namespace {

enum Level { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

Level cpu_level() {
#if defined(WINA_HAVE_X86_ISA_KERNELS)
  __builtin_cpu_init();
  // __builtin_cpu_supports also checks that the OS saves the vector registers (XCR0).
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c"))
    return kAvx2;
#endif
  return kGeneric;
}

Level requested_cap() {
  const char* env = std::getenv("WINA_ONNX_ISA");
  if (env == nullptr || *env == '\0') return kAvx512;
  if (std::strcmp(env, "generic") == 0) return kGeneric;
  if (std::strcmp(env, "avx2") == 0) return kAvx2;
  return kAvx512;
}

}  // namespace

const IsaKernels& select_isa_kernels() {
  static const Level hardware = cpu_level();
  Level level = requested_cap();
  if (level > hardware) level = hardware;
#if defined(WINA_HAVE_X86_ISA_KERNELS)
  if (level == kAvx512) return isa_kernels_avx512();
  if (level == kAvx2) return isa_kernels_avx2();
#endif
  return isa_kernels_generic();
}

}  // namespace wina

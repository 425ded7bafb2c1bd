# WINA_ONNX_SANITIZE=ON builds the op library with AddressSanitizer and
# UndefinedBehaviorSanitizer (scripts/sanitize.sh runs the op tests against it).
# Any report aborts the process (-fno-sanitize-recover), so a test run fails on it.
# The C++ runtime is then linked dynamically: ASan intercepts its allocations.
option(WINA_ONNX_SANITIZE "Build with -fsanitize=address,undefined (tests only, never shipped)" OFF)

function(wina_sanitize target)
  if(NOT WINA_ONNX_SANITIZE)
    return()
  endif()
  set(flags -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g)
  target_compile_options(${target} PRIVATE ${flags})
  get_target_property(_type ${target} TYPE)
  if(NOT _type STREQUAL "OBJECT_LIBRARY")
    target_link_options(${target} PRIVATE ${flags})
  endif()
endfunction()

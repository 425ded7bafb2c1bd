# Finds the ONNX Runtime C/C++ API headers and sets ORT_HEADERS_DIR.
#
# Order: the CMake variable or environment variable ORT_INCLUDE_DIR, then the
# system include dirs (/usr/include/onnxruntime, ...). Only if none has them,
# cmake/fetch_ort_headers.sh downloads Debian's libonnxruntime-dev package into
# the build directory (the headers only; nothing is linked: ORT hands the library
# its API table at run time).
set(ORT_INCLUDE_DIR "$ENV{ORT_INCLUDE_DIR}" CACHE PATH "Directory holding onnxruntime_cxx_api.h")

set(_ort_fetch_root "${CMAKE_BINARY_DIR}/_deps/onnxruntime-headers")
find_path(ORT_HEADERS_DIR onnxruntime_cxx_api.h
  HINTS ${ORT_INCLUDE_DIR}
  PATHS /usr/include /usr/local/include "${_ort_fetch_root}/usr/include"
  PATH_SUFFIXES onnxruntime onnxruntime/core/session
  NO_CMAKE_FIND_ROOT_PATH)

if(NOT ORT_HEADERS_DIR)
  message(STATUS "wina_onnx: ONNX Runtime headers not found; fetching Debian's libonnxruntime-dev")
  execute_process(
    COMMAND bash "${CMAKE_CURRENT_LIST_DIR}/fetch_ort_headers.sh" "${_ort_fetch_root}"
    RESULT_VARIABLE _ort_fetch_result)
  if(NOT _ort_fetch_result EQUAL 0)
    message(FATAL_ERROR
      "wina_onnx: could not fetch the ONNX Runtime headers (see the output above). "
      "Point ORT_INCLUDE_DIR (environment or -DORT_INCLUDE_DIR=...) at a directory "
      "holding onnxruntime_cxx_api.h, e.g. an unpacked ONNX Runtime release's include/.")
  endif()
  unset(ORT_HEADERS_DIR CACHE)
  find_path(ORT_HEADERS_DIR onnxruntime_cxx_api.h
    PATHS "${_ort_fetch_root}/usr/include"
    PATH_SUFFIXES onnxruntime
    NO_DEFAULT_PATH)
  if(NOT ORT_HEADERS_DIR)
    message(FATAL_ERROR "wina_onnx: the fetched package has no onnxruntime_cxx_api.h under ${_ort_fetch_root}")
  endif()
endif()

file(STRINGS "${ORT_HEADERS_DIR}/onnxruntime_c_api.h" _ort_api_line REGEX "^#define ORT_API_VERSION [0-9]+")
string(REGEX REPLACE ".* ([0-9]+)$" "\\1" ORT_HEADERS_API_VERSION "${_ort_api_line}")
if(ORT_HEADERS_API_VERSION LESS 17)
  message(FATAL_ERROR "wina_onnx: ONNX Runtime headers in ${ORT_HEADERS_DIR} have API ${ORT_HEADERS_API_VERSION}; 17 (1.17) or newer is needed")
endif()
message(STATUS "wina_onnx: ONNX Runtime headers: ${ORT_HEADERS_DIR} (API ${ORT_HEADERS_API_VERSION})")

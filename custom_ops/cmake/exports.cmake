# The library exports one symbol, RegisterCustomOps: a linker version script hides
# everything else (including the C++ runtime's inline functions it instantiates).
function(wina_export_only_entry_point target)
  set(map "${CMAKE_CURRENT_FUNCTION_LIST_DIR}/exports.map")
  target_link_options(${target} PRIVATE "LINKER:--version-script=${map}" "LINKER:--no-undefined")
  set_property(TARGET ${target} APPEND PROPERTY LINK_DEPENDS "${map}")
  set_target_properties(${target} PROPERTIES OUTPUT_NAME wina_onnx_ops PREFIX "lib" SUFFIX ".so")
endfunction()

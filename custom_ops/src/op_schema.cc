#include "op_schema.h"

#include "tensor_checks.h"

namespace wina {

namespace {

// "\"topk\" or \"threshold\"": the attribute's accepted values, for error messages.
std::string gating_choices() {
  constexpr size_t n = sizeof(kGatingRules) / sizeof(kGatingRules[0]);
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    if (i > 0) s += i + 1 == n ? " or " : ", ";
    s += std::string("\"") + kGatingRules[i].name + "\"";
  }
  return s;
}

}  // namespace

std::string node_label(const OrtKernelInfo* info, const char* op_type) {
  std::string name;
  try {
    name = Ort::ConstKernelInfo(info).GetNodeName();
  } catch (const Ort::Exception&) {
  }
  return std::string(op_type) + " node '" + name + "'";
}

Gating read_gating(const OrtKernelInfo* info, const std::string& node) {
  std::string value;
  try {
    value = Ort::ConstKernelInfo(info).GetAttribute<std::string>(kAttrGating);
  } catch (const Ort::Exception&) {
    throw InvalidArgument(node + ": attribute '" + kAttrGating + "' is missing; it must be " + gating_choices());
  }
  for (const GatingRule& rule : kGatingRules)
    if (value == rule.name) return rule.gating;
  throw InvalidArgument(node + ": unknown gating '" + value + "'; attribute '" + kAttrGating + "' must be " +
                        gating_choices());
}

const GatingRule& gating_rule(Gating gating) {
  for (const GatingRule& rule : kGatingRules)
    if (rule.gating == gating) return rule;
  throw std::logic_error("a Gating value without a rule in kGatingRules");
}

}  // namespace wina

#include "op_schema.h"

#include <vector>

#include "tensor_checks.h"

namespace wina {

namespace {

// "\"topk\" or \"threshold\"": the attribute's accepted values, for error messages.
std::string gating_choices() {
  std::vector<std::string> names;
  for (const GatingRule& rule : kGatingRules) names.push_back(std::string("\"") + rule.name + "\"");
  return join_words(names, " or ");
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

NBitsAttributes read_nbits_attributes(const OrtKernelInfo* info, const std::string& node) {
  Ort::ConstKernelInfo kinfo(info);
  auto read_int = [&](const char* name, bool required, int64_t fallback) -> int64_t {
    try {
      return kinfo.GetAttribute<int64_t>(name);
    } catch (const Ort::Exception&) {
      if (!required) return fallback;
      throw InvalidArgument(node + ": attribute '" + name + "' (int) is missing");
    }
  };
  NBitsAttributes a;
  a.gating = read_gating(info, node);
  a.K = read_int(kNBitsAttrK, true, 0);
  a.N = read_int(kNBitsAttrN, true, 0);
  a.block_size = read_int(kNBitsAttrBlockSize, true, 0);
  a.accuracy_level = read_int(kNBitsAttrAccuracyLevel, false, 0);
  const int64_t bits = read_int(kNBitsAttrBits, false, kNBitsBits);
  if (bits != kNBitsBits)
    throw InvalidArgument(node + ": bits=" + std::to_string(bits) + "; only 4-bit weights are supported");
  if (a.K < 0 || a.N < 0)
    throw InvalidArgument(node + ": attributes K=" + std::to_string(a.K) + " and N=" + std::to_string(a.N) +
                          " must be >= 0");
  if (a.block_size < 16 || (a.block_size & (a.block_size - 1)) != 0)
    throw InvalidArgument(node + ": block_size=" + std::to_string(a.block_size) +
                          " must be a power of two of 16 or more");
  if (a.accuracy_level < 0 || a.accuracy_level > 4)
    throw InvalidArgument(node + ": accuracy_level=" + std::to_string(a.accuracy_level) + " must be in 0..4");
  return a;
}

const GatingRule& gating_rule(Gating gating) {
  for (const GatingRule& rule : kGatingRules)
    if (rule.gating == gating) return rule;
  throw std::logic_error("a Gating value without a rule in kGatingRules");
}

}  // namespace wina

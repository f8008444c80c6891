#include "core/dtype.h"

#include "core/error.h"

#include <array>
#include <utility>

namespace trustep {
namespace {

struct DtypeEntry {
  c10::ScalarType type;
  WireDtype wire;
  const char* name;
};

constexpr std::array<DtypeEntry, 11> kDtypes{{
    {c10::ScalarType::Float, WireDtype::kFloat32, "fp32"},
    {c10::ScalarType::Half, WireDtype::kFloat16, "fp16"},
    {c10::ScalarType::BFloat16, WireDtype::kBFloat16, "bf16"},
    {c10::ScalarType::Double, WireDtype::kFloat64, "fp64"},
    {c10::ScalarType::Long, WireDtype::kInt64, "int64"},
    {c10::ScalarType::Int, WireDtype::kInt32, "int32"},
    {c10::ScalarType::Byte, WireDtype::kUInt8, "uint8"},
    {c10::ScalarType::Char, WireDtype::kInt8, "int8"},
    {c10::ScalarType::Bool, WireDtype::kBool, "bool"},
    {c10::ScalarType::Float8_e4m3fn, WireDtype::kFloat8E4M3, "fp8_e4m3"},
    {c10::ScalarType::Float8_e5m2, WireDtype::kFloat8E5M2, "fp8_e5m2"},
}};

constexpr std::array<std::pair<const char*, const char*>, 6> kAliases{{
    {"float32", "fp32"}, {"float", "fp32"}, {"float16", "fp16"},
    {"half", "fp16"}, {"bfloat16", "bf16"}, {"float64", "fp64"},
}};

}  // namespace

WireDtype to_wire(c10::ScalarType t) {
  for (const auto& e : kDtypes)
    if (e.type == t) return e.wire;
  return WireDtype::kInvalid;
}

c10::ScalarType from_wire(WireDtype code) {
  for (const auto& e : kDtypes)
    if (e.wire == code) return e.type;
  throw Error(fmt::format("unknown wire dtype code {}", static_cast<int64_t>(code)), TRUSTEP_ORIGIN);
}

std::string dtype_name(c10::ScalarType t) {
  for (const auto& e : kDtypes)
    if (e.type == t) return e.name;
  return c10::toString(t);
}

std::string wire_dtype_name(int64_t code) {
  for (const auto& e : kDtypes)
    if (static_cast<int64_t>(e.wire) == code) return e.name;
  return fmt::format("code {} (unknown)", code);
}

c10::ScalarType parse_dtype(const std::string& name, const std::string& option) {
  std::string canonical = name;
  for (const auto& [alias, target] : kAliases)
    if (name == alias) canonical = target;
  for (const auto& e : kDtypes)
    if (canonical == e.name) return e.type;
  throw OptionError(fmt::format("invalid value '{}' for option '{}': expected a dtype "
                                "(fp32, bf16, fp16, fp64, int64, int32, ...)",
                                name, option),
                    TRUSTEP_ORIGIN);
}

}  // namespace trustep

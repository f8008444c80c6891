#include "core/dtype.h"
#include "core/error.h"

#include <gtest/gtest.h>

namespace trustep {
namespace {

TEST(Dtype, WireCodesRoundTripForEverySupportedType) {
  for (auto t : {c10::ScalarType::Float, c10::ScalarType::Half, c10::ScalarType::BFloat16, c10::ScalarType::Double,
                 c10::ScalarType::Long, c10::ScalarType::Int, c10::ScalarType::Byte, c10::ScalarType::Char,
                 c10::ScalarType::Bool, c10::ScalarType::Float8_e4m3fn, c10::ScalarType::Float8_e5m2}) {
    const WireDtype code = to_wire(t);
    EXPECT_NE(code, WireDtype::kInvalid) << c10::toString(t);
    EXPECT_EQ(from_wire(code), t);
  }
}

TEST(Dtype, WireCodesAreStable) {
  // These numbers travel between ranks: changing one breaks mixed-version jobs silently.
  EXPECT_EQ(static_cast<int64_t>(to_wire(c10::ScalarType::Float)), 1);
  EXPECT_EQ(static_cast<int64_t>(to_wire(c10::ScalarType::Half)), 2);
  EXPECT_EQ(static_cast<int64_t>(to_wire(c10::ScalarType::BFloat16)), 3);
  EXPECT_EQ(static_cast<int64_t>(to_wire(c10::ScalarType::Long)), 5);
}

TEST(Dtype, UnsupportedTypeHasNoWireCode) {
  EXPECT_EQ(to_wire(c10::ScalarType::ComplexFloat), WireDtype::kInvalid);
  EXPECT_THROW(from_wire(WireDtype::kInvalid), Error);
  EXPECT_EQ(wire_dtype_name(42), "code 42 (unknown)");
}

TEST(Dtype, ParsesNamesAndAliases) {
  EXPECT_EQ(parse_dtype("bf16", "--dtype"), c10::ScalarType::BFloat16);
  EXPECT_EQ(parse_dtype("bfloat16", "--dtype"), c10::ScalarType::BFloat16);
  EXPECT_EQ(parse_dtype("half", "--dtype"), c10::ScalarType::Half);
  EXPECT_EQ(parse_dtype("float32", "--dtype"), c10::ScalarType::Float);
  EXPECT_EQ(dtype_name(c10::ScalarType::BFloat16), "bf16");
}

TEST(Dtype, BadNameIsAnOptionErrorNamingTheOption) {
  try {
    parse_dtype("fp12", "--comm-dtype");
    FAIL() << "expected OptionError";
  } catch (const OptionError& e) {
    EXPECT_NE(std::string(e.what()).find("'fp12' for option '--comm-dtype'"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace trustep

// Dtype names and stable wire codes. Wire codes travel between ranks in contract headers,
// so they never depend on at::ScalarType's numbering, which may change across LibTorch versions.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>

namespace trustep {

enum class WireDtype : int64_t {
  kInvalid = 0,
  kFloat32 = 1,
  kFloat16 = 2,
  kBFloat16 = 3,
  kFloat64 = 4,
  kInt64 = 5,
  kInt32 = 6,
  kUInt8 = 7,
  kInt8 = 8,
  kBool = 9,
  kFloat8E4M3 = 10,
  kFloat8E5M2 = 11,
};

WireDtype to_wire(c10::ScalarType t);         // kInvalid for unsupported types
c10::ScalarType from_wire(WireDtype code);    // throws trustep::Error on kInvalid/unknown
// Short names used in options and messages: fp32, fp16, bf16, fp64, int64, int32, uint8,
// int8, bool, fp8_e4m3, fp8_e5m2.
std::string dtype_name(c10::ScalarType t);
std::string wire_dtype_name(int64_t code);    // "code 42 (unknown)" for bad codes
// Parses a short name (also accepts float32/float16/bfloat16/half/float). Throws OptionError.
c10::ScalarType parse_dtype(const std::string& name, const std::string& option);

}  // namespace trustep

// Reader and writer of the safetensors format (the subset in docs/formats.md): an 8-byte
// little-endian header length N, N bytes of JSON naming each tensor's dtype, shape and byte
// range, then the raw little-endian data. Used for checkpoints, expert weights and the trust
// state; a rank loads only the tensors it needs, reading only their byte ranges.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>

namespace trustep {

using TensorMap = std::map<std::string, at::Tensor>;

// Headers larger than this are refused (a corrupt length must not allocate gigabytes).
constexpr uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;

// Writes `tensors` (any device, any contiguity; copied to CPU) and string `metadata`
// atomically: a temporary file in the same directory, flushed, then renamed over `path`.
// Dtypes: fp32, fp16, bf16, fp64, int64, int32, uint8, int8, bool, fp8_e4m3, fp8_e5m2.
// Throws trustep::Error naming the file and, where it applies, the tensor.
void save_safetensors(const std::string& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata = {});

struct SafetensorsFile {
  TensorMap tensors;  // CPU, contiguous
  std::map<std::string, std::string> metadata;
};

// Validates the whole header (every entry, every byte range), then reads only the tensors
// for which `want(name)` is true (empty `want` = all), each from its own byte range.
// Throws trustep::Error naming the file and the tensor: truncated file, header too large,
// bad JSON, unknown dtype, offsets out of range, overlapping or leaving gaps, size not
// matching dtype and shape, bool bytes other than 0/1.
SafetensorsFile load_safetensors(const std::string& path,
                                 const std::function<bool(const std::string&)>& want = {});

}  // namespace trustep

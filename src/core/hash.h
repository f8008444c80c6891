// FNV-1a (64 bit): a hash that is the same on every platform and standard library (std::hash
// is not), for digests that ranks compare and for seeds derived from names.
#pragma once

#include <cstddef>
#include <cstdint>

namespace trustep {

inline uint64_t fnv1a(const void* data, size_t bytes, uint64_t seed = 1469598103934665603ULL) {
  uint64_t h = seed;
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) {
    h ^= p[i];
    h *= 1099511628211ULL;
  }
  return h;
}

}  // namespace trustep

// Helpers shared by the single-process tests.
#pragma once

#include "comm/communicator.h"
#include "core/error.h"

#include <ATen/core/Tensor.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <string>

namespace trustep::testing {

// A world of one: the full collective path (checks, header, watchdog) without MPI.
inline std::unique_ptr<comm::Communicator> make_self(ContractPolicy policy = ContractPolicy::kStrict) {
  comm::CommOptions o;
  o.backend = comm::Backend::kSelf;
  o.policy = policy;
  o.timeout_s = 30;
  return comm::make_communicator(o);
}

// The message of the E that f throws, or "no error".
template <typename E = Error>
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return "no error";
}

// Same dtype, shape and bytes.
inline bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const at::Tensor x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.const_data_ptr(), y.const_data_ptr(), x.nbytes()) == 0;
}

// A whole file as bytes ("" when it cannot be read).
inline std::string text_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace trustep::testing

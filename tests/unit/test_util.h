// Helpers shared by the single-process tests.
#pragma once

#include "comm/communicator.h"
#include "core/error.h"

#include <functional>
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

}  // namespace trustep::testing

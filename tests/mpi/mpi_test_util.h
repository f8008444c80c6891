// Helpers shared by the MPI suites.
#pragma once

#include "comm/communicator.h"
#include "core/hash.h"

#include <gtest/gtest.h>
#include <mpi.h>

#include <memory>
#include <string>
#include <vector>

namespace trustep::testing {

inline std::unique_ptr<comm::Communicator> make_mpi_comm(ContractPolicy policy = ContractPolicy::kStrict,
                                                         double timeout_s = 60) {
  comm::CommOptions o;
  o.backend = comm::Backend::kMpi;
  o.policy = policy;
  o.timeout_s = timeout_s;
  return comm::make_communicator(o);
}

// True when every rank passes the same string (compared by hash through raw MPI, so the check
// does not depend on the code under test).
inline bool same_on_every_rank(const std::string& text) {
  const uint64_t mine = fnv1a(text.data(), text.size());
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  std::vector<uint64_t> all(size);
  MPI_Allgather(&mine, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD);
  for (uint64_t h : all)
    if (h != all[0]) return false;
  return true;
}

// Runs `f`, expecting a collective error of type E on this rank; returns its message ("" when
// none was thrown).
template <typename E, typename F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    EXPECT_TRUE(e.collective()) << e.what();
    return e.what();
  }
  return "";
}

}  // namespace trustep::testing

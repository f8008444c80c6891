// A disagreement on one rank becomes the same clear error on every rank, before any row moves,
// and the communicator stays usable afterwards. No test here may hang: each failing path is a
// header-verified error, and the watchdog (60 s) would abort the job otherwise.
#include "comm/communicator.h"
#include "core/error.h"
#include "mpi_test_util.h"

#include <ATen/ops/full.h>
#include <ATen/ops/ones.h>
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

namespace trustep {
namespace {

using testing::make_mpi_comm;
using testing::same_on_every_rank;
using testing::message_of;

const Contract kFp32Send{boundary::kDispatchSend, c10::ScalarType::Float, c10::DeviceType::CPU, 2, true};

std::vector<int64_t> one_row_each(int world) { return std::vector<int64_t>(world, 1); }

TEST(ContractAgreement, OneRankSendingTheWrongDtypeFailsEveryRankWithTheSameMessage) {
  auto comm = make_mpi_comm();
  const int w = comm->size();
  const auto dtype = comm->rank() == 1 ? at::kBFloat16 : at::kFloat;
  const std::string msg = message_of<ContractViolation>(
      [&] { comm->all_to_all_v(at::ones({w, 8}, dtype), one_row_each(w), kFp32Send, /*layer=*/3); });
  EXPECT_EQ(msg,
            "contract violation at boundary 'dispatch.send' (rank 1, layer 3): expected fp32, got bf16 (policy "
            "strict) [raised on every rank]");
  EXPECT_TRUE(same_on_every_rank(msg));
  // Nothing moved, nothing is left half-done: the next exchange works.
  const auto ok = comm->all_to_all_v(at::ones({w, 8}, at::kFloat), one_row_each(w), kFp32Send);
  EXPECT_EQ(ok.recv.size(0), w);
}

TEST(ContractAgreement, RanksDeclaringDifferentContractsFailTogether) {
  auto comm = make_mpi_comm();
  const int w = comm->size();
  Contract declared = kFp32Send;
  if (comm->rank() == w - 1) declared.dtype = at::kBFloat16;
  const auto send = at::ones({w, 4}, declared.dtype);
  const std::string msg =
      message_of<ContractViolation>([&] { comm->all_to_all_v(send, one_row_each(w), declared); });
  EXPECT_NE(msg.find(fmt::format("rank 0 declares fp32, rank {} declares bf16", w - 1)), std::string::npos) << msg;
  EXPECT_TRUE(same_on_every_rank(msg));
}

TEST(ContractAgreement, RowWidthMismatchFailsTogether) {
  auto comm = make_mpi_comm();
  const int w = comm->size();
  const int64_t width = comm->rank() == 0 ? 16 : 8;
  const std::string msg = message_of<ContractViolation>(
      [&] { comm->all_to_all_v(at::ones({w, width}, at::kFloat), one_row_each(w), kFp32Send); });
  EXPECT_NE(msg.find("(rank 1): expected rows of 16 elements (as rank 0), got rows of 8 elements"), std::string::npos)
      << msg;
  EXPECT_TRUE(same_on_every_rank(msg));
}

TEST(ContractAgreement, BadCountsOnOneRankFailTogether) {
  auto comm = make_mpi_comm();
  const int w = comm->size();
  auto counts = one_row_each(w);
  if (comm->rank() == 0) counts[w - 1] = 2;  // sums to w + 1 rows for a w-row tensor
  const std::string msg =
      message_of<CommError>([&] { comm->all_to_all_v(at::ones({w, 4}, at::kFloat), counts, kFp32Send); });
  EXPECT_NE(msg.find(fmt::format("on rank 0: send counts add up to {} rows but the tensor has {}", w + 1, w)),
            std::string::npos)
      << msg;
  EXPECT_TRUE(same_on_every_rank(msg));
}

TEST(ContractAgreement, CastPolicyRepairsTheOddRankAndCountsIt) {
  auto comm = make_mpi_comm(ContractPolicy::kCast);
  const int w = comm->size();
  const auto dtype = comm->rank() == 1 ? at::kBFloat16 : at::kFloat;
  const auto result = comm->all_to_all_v(at::full({w, 8}, 3.0, dtype), one_row_each(w), kFp32Send);
  EXPECT_EQ(result.recv.scalar_type(), at::kFloat);
  EXPECT_TRUE(result.recv.equal(at::full({w, 8}, 3.0, at::kFloat)));
  EXPECT_EQ(comm->contracts().casts("dispatch.send"), comm->rank() == 1 ? 1 : 0);
}

TEST(ContractAgreement, RanksInDifferentCollectivesFailInsteadOfHanging) {
  auto comm = make_mpi_comm();
  at::Tensor t = at::ones({3}, at::kFloat);
  const std::string msg = message_of<CommError>([&] {
    if (comm->rank() == 0)
      comm->barrier("step.end");
    else
      comm->all_reduce(t, comm::ReduceOp::kSum, "grads");
  });
  EXPECT_NE(msg.find("ranks are not in the same collective: barrier #1 at boundary 'step.end' on rank 0, but "
                     "all_reduce #1 at boundary 'grads' on rank 1"),
            std::string::npos)
      << msg;
  EXPECT_TRUE(same_on_every_rank(msg));
}

TEST(ContractAgreement, ReductionsOfDifferentSizesFailTogether) {
  auto comm = make_mpi_comm();
  at::Tensor t = at::ones({comm->rank() == 0 ? 4 : 5}, at::kFloat);
  const std::string msg = message_of<CommError>([&] { comm->all_reduce(t, comm::ReduceOp::kSum, "grads"); });
  EXPECT_NE(msg.find("rank 0 passes 4 elements, rank 1 passes 5"), std::string::npos) << msg;
  EXPECT_TRUE(same_on_every_rank(msg));
}

TEST(ContractAgreement, DifferentOptionsAreCaught) {
  auto comm = make_mpi_comm();
  const std::string msg =
      message_of<CommError>([&] { comm->check_agreement(comm->rank() == 1 ? 7 : 5, "their options"); });
  EXPECT_NE(msg.find("ranks disagree on their options: rank 0 has 0x0000000000000005, rank 1 has"), std::string::npos)
      << msg;
  EXPECT_NO_THROW(comm->check_agreement(99, "their options"));
}

// Run on its own by ctest (it ends the job): rank 1 skips a barrier; rank 0's watchdog must
// explain and abort the whole job within the timeout instead of waiting forever.
TEST(Watchdog, DISABLED_AbortsJobWhenRankSkipsCollective) {
  auto comm = make_mpi_comm(ContractPolicy::kStrict, /*timeout_s=*/2);
  if (comm->rank() != 1) comm->barrier("skipped-by-rank-1");
  std::this_thread::sleep_for(std::chrono::seconds(30));
  ADD_FAILURE() << "the watchdog did not abort the job";
}

}  // namespace
}  // namespace trustep

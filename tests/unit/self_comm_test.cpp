// The self backend runs the whole collective path (local checks, header, verification,
// watchdog) with a world of one, so it is where the single-process behaviour is pinned down.
#include "comm/communicator.h"
#include "core/error.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/full.h>
#include <ATen/ops/ones.h>
#include <gtest/gtest.h>

namespace trustep::comm {
namespace {

std::unique_ptr<Communicator> make_self(ContractPolicy policy = ContractPolicy::kStrict) {
  CommOptions o;
  o.backend = Backend::kSelf;
  o.policy = policy;
  o.timeout_s = 30;
  return make_communicator(o);
}

const Contract kSend{boundary::kDispatchSend, c10::ScalarType::Float, c10::DeviceType::CPU, 2, true};

TEST(SelfComm, AllToAllReturnsACopyOfTheRows) {
  auto comm = make_self();
  EXPECT_EQ(comm->size(), 1);
  EXPECT_STREQ(comm->name(), "self");
  const at::Tensor send = at::arange(12, at::kFloat).reshape({4, 3});
  const auto result = comm->all_to_all_v(send, {4}, kSend);
  EXPECT_EQ(result.recv_counts, std::vector<int64_t>{4});
  EXPECT_TRUE(result.recv.equal(send));
  EXPECT_NE(result.recv.data_ptr(), send.data_ptr());
}

TEST(SelfComm, ReceiveBufferIsReusedAndGrown) {
  auto comm = make_self();
  at::Tensor buffer;
  const at::Tensor big = at::ones({8, 3}, at::kFloat);
  auto r1 = comm->all_to_all_v(big, {8}, kSend, -1, &buffer);
  ASSERT_TRUE(buffer.defined());
  void* storage = buffer.data_ptr();
  auto r2 = comm->all_to_all_v(at::full({5, 3}, 2.0, at::kFloat), {5}, kSend, -1, &buffer);
  EXPECT_EQ(buffer.data_ptr(), storage);
  EXPECT_EQ(r2.recv.size(0), 5);
  EXPECT_EQ(r2.recv.data_ptr(), storage);
  EXPECT_TRUE(r2.recv.equal(at::full({5, 3}, 2.0, at::kFloat)));
  comm->all_to_all_v(at::ones({40, 3}, at::kFloat), {40}, kSend, -1, &buffer);
  EXPECT_GE(buffer.size(0), 40);
}

TEST(SelfComm, EmptyExchangeIsNormal) {
  auto comm = make_self();
  const auto result = comm->all_to_all_v(at::ones({0, 3}, at::kFloat), {0}, kSend);
  EXPECT_EQ(result.recv.sizes(), (c10::IntArrayRef{0, 3}));
}

TEST(SelfComm, StrictContractViolationIsCollectiveAndNamesEverything) {
  auto comm = make_self();
  try {
    comm->all_to_all_v(at::ones({2, 3}, at::kBFloat16), {2}, kSend, /*layer=*/1);
    FAIL() << "expected ContractViolation";
  } catch (const ContractViolation& e) {
    EXPECT_TRUE(e.collective());
    EXPECT_EQ(e.boundary(), "dispatch.send");
    EXPECT_EQ(e.expected(), "fp32");
    EXPECT_EQ(e.actual(), "bf16");
    EXPECT_EQ(e.rank(), 0);
    EXPECT_NE(std::string(e.what()).find("(rank 0, layer 1): expected fp32, got bf16"), std::string::npos);
  }
}

TEST(SelfComm, CastPolicyRepairsAndCounts) {
  auto comm = make_self(ContractPolicy::kCast);
  const auto result = comm->all_to_all_v(at::ones({2, 3}, at::kBFloat16), {2}, kSend);
  EXPECT_EQ(result.recv.scalar_type(), c10::ScalarType::Float);
  EXPECT_EQ(comm->contracts().casts("dispatch.send"), 1);
}

TEST(SelfComm, BadCountsAreErrorsNotCrashes) {
  auto comm = make_self();
  EXPECT_THROW(comm->all_to_all_v(at::ones({2, 3}, at::kFloat), {3}, kSend), CommError);
  EXPECT_THROW(comm->all_to_all_v(at::ones({2, 3}, at::kFloat), {1, 1}, kSend), CommError);
  EXPECT_THROW(comm->all_to_all_v(at::ones({6}, at::kFloat), {6}, kSend), ContractViolation);
}

TEST(SelfComm, ReductionsGatherAndBroadcast) {
  auto comm = make_self();
  at::Tensor t = at::arange(5, at::kFloat);
  comm->all_reduce(t, ReduceOp::kSum, "test.sum");
  EXPECT_TRUE(t.equal(at::arange(5, at::kFloat)));
  const at::Tensor g = comm->all_gather(at::arange(6, at::kLong).reshape({2, 3}));
  EXPECT_EQ(g.sizes(), (c10::IntArrayRef{1, 2, 3}));
  comm->broadcast(t, 0);
  EXPECT_THROW(comm->broadcast(t, 1), CommError);  // no rank 1 in a world of one
  comm->barrier();
  EXPECT_GT(comm->collectives_started(), 4);
}

TEST(SelfComm, NonContiguousInPlaceTensorIsRefused) {
  auto comm = make_self();
  at::Tensor t = at::ones({3, 4}, at::kFloat).t();
  EXPECT_THROW(comm->all_reduce(t), ContractViolation);
}

}  // namespace
}  // namespace trustep::comm

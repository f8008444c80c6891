// Context centroids stay bit-identical across ranks that feed different data, and equal a
// replay of the same updates in one process from all ranks' batches. A bad batch on one rank
// fails every rank together; a rank whose state diverged is caught by check_consistent.
#include "routing/context.h"

#include "comm/communicator.h"
#include "core/error.h"
#include "mpi_test_util.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <string>
#include <vector>

namespace trustep::routing {
namespace {

using testing::make_mpi_comm;
using testing::same_on_every_rank;

constexpr int64_t kContexts = 4, kHidden = 12;

ContextConfig config() {
  ContextConfig c;
  c.contexts = kContexts;
  c.dim = kHidden;
  c.seed = 5;
  return c;
}

// This rank's batch for a step: T depends on rank and step (rank step % world sends nothing on
// every third step, and step 5 is empty everywhere); rows are 4 noisy directions at random scales.
at::Tensor local_batch(int rank, int world, int step, c10::ScalarType dtype) {
  int64_t t = (rank * 7 + step * 5) % 23 + 1;
  if ((step % 3 == 0 && rank == step % world) || step == 5) t = 0;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1000 * static_cast<uint64_t>(rank) + step);
  const auto fp32 = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor dirs = at::randn({4, kHidden}, at::make_generator<at::CPUGeneratorImpl>(42), fp32);  // [4, H]
  const at::Tensor pick = at::randint(4, {t}, gen, at::TensorOptions().dtype(at::kLong));           // [T]
  const at::Tensor scale = at::rand({t, 1}, gen, fp32).mul(3).add(0.1);                               // [T, 1]
  return dirs.index_select(0, pick).add(at::randn({t, kHidden}, gen, fp32).mul(0.4)).mul(scale).to(dtype);
}

// [world, T_max, ...] gathered from rows padded to the largest T.
at::Tensor gather_padded(comm::Communicator& comm, const at::Tensor& rows, int64_t t_max) {
  std::vector<int64_t> shape(rows.sizes().begin(), rows.sizes().end());
  shape[0] = t_max;
  at::Tensor padded = at::zeros(shape, rows.options());
  padded.narrow(0, 0, rows.size(0)).copy_(rows);
  return comm.all_gather(padded, "context-test");
}

class ContextConsistency : public ::testing::TestWithParam<c10::ScalarType> {};

TEST_P(ContextConsistency, RanksWithDifferentDataKeepIdenticalCentroidsEqualToAReplay) {
  auto comm = make_mpi_comm();
  const int rank = comm->rank(), world = comm->size();
  const auto dtype = GetParam();
  ContextClassifier k(config(), at::kCPU, dtype, ContractPolicy::kStrict, rank);
  ContextClassifier replay(config(), at::kCPU, dtype);  // local only: sees every rank's batch
  int64_t total = 0;
  for (int step = 0; step < 12; ++step) {
    const at::Tensor batch = local_batch(rank, world, step, dtype);  // [T, H]
    const at::Tensor assigned = k.update(batch, *comm);               // [T]
    ASSERT_EQ(assigned.size(0), batch.size(0));
    k.check_consistent(*comm);

    const auto sizes = comm->all_gather_i64({batch.size(0)}, "context-test sizes");
    const int64_t t_max = *std::max_element(sizes.begin(), sizes.end());
    const at::Tensor rows = gather_padded(*comm, batch, t_max);        // [W, T_max, H]
    const at::Tensor assigns = gather_padded(*comm, assigned, t_max);  // [W, T_max]
    at::Tensor sums = at::zeros({kContexts, kHidden}, at::kLong), counts = at::zeros({kContexts}, at::kLong);
    for (int r = 0; r < world; ++r) {
      const at::Tensor mine = rows[r].narrow(0, 0, sizes[r]).contiguous();  // rank r's batch, as it had it
      const at::Tensor a = replay.accumulate(mine, sums, counts);
      EXPECT_TRUE(a.equal(assigns[r].narrow(0, 0, sizes[r]))) << "step " << step << ", rank " << r;
      total += sizes[r];
    }
    replay.apply(sums, counts);
    ASSERT_TRUE(k.centroids().equal(replay.centroids())) << "step " << step;
    ASSERT_TRUE(k.counts().equal(replay.counts())) << "step " << step;
  }
  EXPECT_EQ(k.counts().sum().item<int64_t>(), total);
  EXPECT_GT(total, 0);
  // Independent of the code under test: the centroid bytes hash equal on every rank.
  const at::Tensor c = k.centroids().contiguous();
  EXPECT_TRUE(same_on_every_rank(std::string(static_cast<const char*>(c.const_data_ptr()), c.nbytes())));
  // More than one context is in use, so the consistency is not trivial.
  EXPECT_GE(k.counts().gt(0).sum().item<int64_t>(), 2);
}

INSTANTIATE_TEST_SUITE_P(ContextDtypes, ContextConsistency, ::testing::Values(at::kFloat, at::kBFloat16),
                         [](const auto& info) { return info.param == at::kFloat ? "fp32" : "bf16"; });

TEST(ContextCollective, ABadBatchOnOneRankFailsEveryRankAndChangesNothing) {
  auto comm = make_mpi_comm();
  const int rank = comm->rank(), world = comm->size();
  ContextClassifier k(config(), at::kCPU, at::kFloat, ContractPolicy::kStrict, rank);
  k.update(local_batch(rank, world, 1, at::kFloat), *comm);
  const uint64_t before = k.digest();

  std::string msg;
  try {
    k.update(rank == 1 ? at::zeros({3, kHidden + 1}) : local_batch(rank, world, 2, at::kFloat), *comm);
  } catch (const Error& e) {
    EXPECT_TRUE(e.collective());
    msg = e.what();
  }
  EXPECT_NE(msg.find("13 columns"), std::string::npos) << msg;
  EXPECT_NE(msg.find("rank 1"), std::string::npos) << msg;
  EXPECT_TRUE(same_on_every_rank(msg));
  EXPECT_EQ(k.digest(), before);

  msg.clear();
  try {
    k.update(local_batch(rank, world, 2, rank == world - 1 ? at::kBFloat16 : at::kFloat), *comm);
  } catch (const ContractViolation& e) {
    EXPECT_TRUE(e.collective());
    EXPECT_EQ(e.rank(), world - 1);
    EXPECT_EQ(e.actual(), "bf16");
    msg = e.what();
  }
  EXPECT_EQ(msg, fmt::format("contract violation at boundary 'context.query' (rank {}): expected fp32, got bf16 "
                             "[raised on every rank]",
                             world - 1));
  EXPECT_TRUE(same_on_every_rank(msg));
  EXPECT_EQ(k.digest(), before);

  msg.clear();
  try {
    at::Tensor batch = local_batch(rank, world, 4, at::kFloat);
    if (rank == 0) batch[0][0] = std::numeric_limits<float>::quiet_NaN();
    k.update(batch, *comm);
  } catch (const Error& e) {
    EXPECT_TRUE(e.collective());
    msg = e.what();
  }
  EXPECT_NE(msg.find("1 hidden rows of rank 0"), std::string::npos) << msg;
  EXPECT_TRUE(same_on_every_rank(msg));
  EXPECT_EQ(k.digest(), before);

  // The collectives stayed in step: the next update works and agrees.
  k.update(local_batch(rank, world, 3, at::kFloat), *comm);
  k.check_consistent(*comm);
  EXPECT_NE(k.digest(), before);
}

TEST(ContextCollective, CheckConsistentCatchesADivergedRank) {
  auto comm = make_mpi_comm();
  const int rank = comm->rank();
  ContextClassifier k(config(), at::kCPU, at::kFloat);
  k.check_consistent(*comm);
  if (rank == 0) {
    auto s = k.state();
    s.at("context.counts")[2] = 1;  // one count off
    k.load_state(s);
  }
  std::string msg;
  try {
    k.check_consistent(*comm);
  } catch (const CommError& e) {
    EXPECT_TRUE(e.collective());
    msg = e.what();
  }
  EXPECT_NE(msg.find("the context centroids"), std::string::npos) << msg;
  EXPECT_TRUE(same_on_every_rank(msg));
}

}  // namespace
}  // namespace trustep::routing

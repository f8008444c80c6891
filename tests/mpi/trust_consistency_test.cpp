// Every rank credits different tokens; after each step the tables must be bit-identical on
// all ranks and equal a loop reference fed with every rank's inputs (all-gathered).
#include "core/error.h"
#include "tests/mpi/mpi_test_util.h"
#include "tests/unit/trust_reference.h"
#include "trust/trust_table.h"

#include <ATen/ops/full.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>

namespace trustep::trust {
namespace {

using namespace testref;

// Row r of a gathered [W, ...] tensor as host values.
template <typename T>
std::vector<T> row_of(const at::Tensor& gathered, int64_t r) {
  return values_of<T>(gathered.select(0, r));
}

// All ranks' batches, in rank order (every rank passes a batch with the same T and k).
std::vector<Batch> gather_batches(comm::Communicator& comm, const Batch& mine) {
  const at::Tensor layer = comm.all_gather(tensor_of(std::vector<int64_t>{mine.layer}, {1}, at::kLong), "test.layer");
  const at::Tensor ctx = comm.all_gather(tensor_of(mine.ctx, {mine.T}, at::kLong), "test.ctx");
  const at::Tensor experts = comm.all_gather(tensor_of(mine.experts, {mine.T, mine.k}, at::kLong), "test.experts");
  const at::Tensor weights = comm.all_gather(tensor_of(mine.weights, {mine.T, mine.k}, at::kFloat), "test.weights");
  const at::Tensor quality = comm.all_gather(tensor_of(mine.quality, {mine.T}, at::kFloat), "test.quality");
  std::vector<Batch> all;
  for (int64_t r = 0; r < comm.size(); ++r)
    all.push_back(Batch{.layer = row_of<int64_t>(layer, r)[0], .T = mine.T, .k = mine.k,
                        .ctx = row_of<int64_t>(ctx, r), .experts = row_of<int64_t>(experts, r),
                        .weights = row_of<float>(weights, r), .quality = row_of<float>(quality, r)});
  return all;
}

TEST(TrustConsistency, TablesStayIdenticalAndMatchAGatheredReference) {
  auto comm = testing::make_mpi_comm();
  const TrustConfig cfg{.layers = 2, .contexts = 3, .experts = 8, .prior = 0.5, .min_evidence = 8,
                        .learning_rate = 0.1};
  TrustTable table(cfg, c10::kCPU);
  Reference ref(cfg);
  std::mt19937 rng(1000 + comm->rank());  // different tokens on every rank
  for (int step = 0; step < 50; ++step) {
    for (int layer_call = 0; layer_call < 2; ++layer_call) {
      const Batch mine = random_batch(rng, cfg, 24, 2);
      credit(table, mine);
      for (const Batch& b : gather_batches(*comm, mine)) ref.credit(b);
    }
    table.apply_step(*comm);
    ref.apply();
    ASSERT_NO_THROW(table.check_consistent(*comm)) << "step " << step;
    ASSERT_EQ(values_of<float>(table.trust()), ref.trust) << "step " << step;
    ASSERT_EQ(values_of<float>(table.evidence()), ref.evidence) << "step " << step;
  }
  EXPECT_TRUE(testing::same_on_every_rank(std::to_string(table.digest())));
  // 50 steps of 2 × 24 tokens × 2 slots per rank reach min_evidence for most experts.
  EXPECT_GT(table.evidenced_experts(0).sum().item<int64_t>(), cfg.contexts * cfg.experts / 2);
}

TEST(TrustConsistency, ADivergedRankFailsTheCheckOnEveryRank) {
  auto comm = testing::make_mpi_comm();
  const TrustConfig cfg{.layers = 1, .contexts = 2, .experts = 4};
  TrustTable table(cfg, c10::kCPU);
  if (comm->rank() == comm->size() - 1) {
    TensorMap state = table.state();
    state.at("trust.value")[0][1][2].fill_(0.75f);
    table.load_state(state);
  }
  try {
    table.check_consistent(*comm);
    FAIL() << "expected a CommError";
  } catch (const CommError& e) {
    EXPECT_TRUE(e.collective());
    EXPECT_NE(std::string(e.what()).find("ranks disagree on the trust table"), std::string::npos) << e.what();
    EXPECT_TRUE(testing::same_on_every_rank(e.what()));
  }
}

TEST(TrustConsistency, BadCreditOnOneRankFailsTheStepOnEveryRank) {
  auto comm = testing::make_mpi_comm();
  const TrustConfig cfg{.layers = 1, .contexts = 2, .experts = 4};
  TrustTable table(cfg, c10::kCPU);
  const int64_t bad_expert = comm->rank() == 0 ? 9 : 1;  // only rank 0 passes an expert out of range
  credit(table, Batch{.layer = 0, .T = 1, .k = 2, .ctx = {0}, .experts = {bad_expert, 2}, .weights = {0.5f, 0.5f},
                      .quality = {1.0f}});
  try {
    table.apply_step(*comm);
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_TRUE(e.collective());
    EXPECT_NE(std::string(e.what()).find("layer 0: 1 slot(s) with an expert outside [-1, E)"), std::string::npos)
        << e.what();
    EXPECT_TRUE(testing::same_on_every_rank(e.what()));
  }
  EXPECT_TRUE(table.evidence().equal(at::full({1, 2, 4}, 0.0f)));
  table.check_consistent(*comm);
}

TEST(TrustConsistency, TokenQualityUsesGlobalContextMeans) {
  auto comm = testing::make_mpi_comm();
  const int64_t C = 4, T = 40;
  std::mt19937 rng(77 + comm->rank());
  std::uniform_real_distribution<float> loss_dist(0.0f, 4.0f + comm->rank());  // ranks see different losses
  std::vector<float> loss;
  std::vector<int64_t> ctx;
  for (int64_t t = 0; t < T; ++t) {
    loss.push_back(loss_dist(rng));
    // Context 3 has tokens on rank 0 only; contexts 0-2 everywhere.
    ctx.push_back(comm->rank() == 0 && t % 5 == 0 ? 3 : std::uniform_int_distribution<int64_t>(0, 2)(rng));
  }
  const at::Tensor loss_t = tensor_of(loss, {T}, at::kFloat), ctx_t = tensor_of(ctx, {T}, at::kLong);
  const std::vector<float> got = values_of<float>(token_quality(loss_t, ctx_t, C, 1.5, comm.get()));

  const at::Tensor all_loss = comm->all_gather(loss_t, "test.loss"), all_ctx = comm->all_gather(ctx_t, "test.ctx");
  const std::vector<float> gl = values_of<float>(all_loss);
  const std::vector<int64_t> gc = values_of<int64_t>(all_ctx);
  std::vector<double> sum(C), count(C);
  for (size_t i = 0; i < gl.size(); ++i) {
    sum[gc[i]] += gl[i];
    count[gc[i]] += 1;
  }
  for (int64_t t = 0; t < T; ++t) {
    const double expect = 1.0 / (1.0 + std::exp(-(sum[ctx[t]] / count[ctx[t]] - loss[t]) / 1.5));
    ASSERT_NEAR(got[t], expect, 2e-6) << "rank " << comm->rank() << " token " << t;
  }
  // The local-only means differ from the global ones, so the check above can tell them apart.
  const std::vector<float> local = values_of<float>(token_quality(loss_t, ctx_t, C, 1.5, nullptr));
  size_t differing = 0;
  for (int64_t t = 0; t < T; ++t) differing += std::abs(local[t] - got[t]) > 1e-4;
  EXPECT_GT(differing, 0u);
}

TEST(TrustConsistency, TokenQualityBadLossOnOneRankFailsEveryRank) {
  auto comm = testing::make_mpi_comm();
  const std::vector<float> loss{1.0f, comm->rank() == 1 ? INFINITY : 2.0f};
  try {
    token_quality(tensor_of(loss, {2}, at::kFloat), tensor_of(std::vector<int64_t>{0, 1}, {2}, at::kLong), 2, 1.0,
                  comm.get());
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_TRUE(e.collective());
    EXPECT_NE(std::string(e.what()).find("1 with a loss that is not finite"), std::string::npos) << e.what();
    EXPECT_TRUE(testing::same_on_every_rank(e.what()));
  }
}

}  // namespace
}  // namespace trustep::trust

// The expert-parallel layer on W ranks equals the same layer in one process holding every
// expert (forward, input gradients, router and expert weight gradients), and dispatch →
// identity experts → combine returns the input exactly. Each rank routes its own shard; the
// one-process reference routes the same shards one by one (capacity is per rank's tokens).
#include "comm/communicator.h"
#include "core/error.h"
#include "dispatch/dispatcher.h"
#include "model/moe_layer.h"
#include "mpi_test_util.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/TensorOperators.h>
#include <c10/core/GradMode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>

namespace trustep {
namespace {

using testing::make_mpi_comm;

std::unique_ptr<comm::Communicator> make_self() {
  comm::CommOptions o;
  o.backend = comm::Backend::kSelf;
  return comm::make_communicator(o);
}

// Shard sizes differ per rank; with `empty_rank` the last rank holds no tokens at all.
int64_t shard_tokens(int rank, bool empty_rank, int world) { return (empty_rank && rank == world - 1) ? 0 : 7 + 5 * rank; }

struct Shard {
  at::Tensor x, probe, trust, trusted;  // [T, H], [T, H] loss weights, [T, E], [T]
};

Shard make_shard(int rank, bool empty_rank, int world, int64_t H, int64_t E, c10::ScalarType dtype) {
  at::Generator gen = at::detail::createCPUGenerator(1000 + rank);
  const int64_t T = shard_tokens(rank, empty_rank, world);
  Shard s;
  s.x = at::randn({T, H}, gen, at::kFloat).to(dtype);
  s.probe = at::randn({T, H}, gen, at::kFloat);
  s.trust = at::rand({T, E}, gen, at::kFloat);
  s.trusted = at::rand({T}, gen, at::kFloat) < 0.7;
  return s;
}

struct Case {
  routing::SelectorMode mode;
  routing::OverflowPolicy overflow;
  c10::ScalarType dtype, comm_dtype;
  bool empty_rank;
  int64_t top_k = 2;
  bool zero_router = false;  // all logits equal: ties send every token to experts 0..k-1
};

void run_case(const Case& c) {
  auto comm = make_mpi_comm();
  auto self = make_self();
  const int W = comm->size(), R = comm->rank();
  model::MoELayerConfig cfg;
  cfg.hidden = 16;
  cfg.ffn = 24;
  cfg.experts = 8;
  cfg.top_k = c.top_k;
  cfg.dtype = c.dtype;
  cfg.comm_dtype = c.comm_dtype;
  cfg.selector.mode = c.mode;
  cfg.selector.overflow = c.overflow;
  cfg.selector.capacity_factor = 0.75;
  cfg.seed = 5;
  const std::string what = fmt::format("mode {} overflow {} dtype {} comm {} empty_rank {}",
                                       routing::mode_name(c.mode), routing::overflow_name(c.overflow),
                                       c10::toString(c.dtype), c10::toString(c.comm_dtype), c.empty_rank);

  auto loss_of = [&](model::MoELayerImpl& layer, const Shard& s, at::Tensor& x) {
    routing::SelectorInputs trust;
    trust.trust = s.trust;
    trust.trusted = s.trusted;
    const auto out = layer.forward(x, trust);
    EXPECT_EQ(out.hidden.scalar_type(), c.dtype) << what;
    return std::make_pair(out.hidden, (out.hidden.to(at::kFloat) * s.probe).sum() + out.balance_loss);
  };

  // Expert parallel: my shard on W ranks.
  model::MoELayerImpl ep(cfg, *comm);
  model::MoELayerImpl ref(cfg, *self);
  if (c.zero_router) {
    c10::NoGradGuard no_grad;
    ep.router->weight.zero_();
    ref.router->weight.zero_();
  }
  const Shard mine = make_shard(R, c.empty_rank, W, cfg.hidden, cfg.experts, c.dtype);
  at::Tensor x = mine.x.clone().requires_grad_(true);
  auto [y, loss] = loss_of(ep, mine, x);
  loss.backward();
  at::Tensor router_grad = ep.router->weight.grad().clone();
  comm->all_reduce(router_grad, comm::ReduceOp::kSum, "test.router_grad");  // data-parallel gradient

  // Reference: one process, every expert, every shard in turn.
  at::Tensor ref_y, ref_x_grad;
  for (int r = 0; r < W; ++r) {
    const Shard s = make_shard(r, c.empty_rank, W, cfg.hidden, cfg.experts, c.dtype);
    at::Tensor xr = s.x.clone().requires_grad_(true);
    auto [yr, lr] = loss_of(ref, s, xr);
    lr.backward();
    if (r == R) {
      ref_y = yr.detach();
      ref_x_grad = xr.grad().defined() ? xr.grad() : at::zeros_like(xr);
    }
  }
  const double tol = c.dtype == at::kFloat && c.comm_dtype == at::kFloat ? 1e-5 : 2e-2;
  ASSERT_TRUE(at::allclose(y.detach().to(at::kFloat), ref_y.to(at::kFloat), tol, tol)) << what << ": outputs differ";
  if (x.grad().defined())
    EXPECT_TRUE(at::allclose(x.grad().to(at::kFloat), ref_x_grad.to(at::kFloat), tol, tol)) << what << ": input grads";
  EXPECT_TRUE(at::allclose(router_grad.to(at::kFloat), ref.router->weight.grad().to(at::kFloat), tol, tol))
      << what << ": router weight grads";
  const int64_t first = R * (cfg.experts / W), local = cfg.experts / W;
  for (auto [mine_w, ref_w, name] :
       {std::tuple{ep.experts->gate, ref.experts->gate, "gate"}, std::tuple{ep.experts->up, ref.experts->up, "up"},
        std::tuple{ep.experts->down, ref.experts->down, "down"}}) {
    // A rank whose experts received no rows has no gradient (not computed): the reference's is 0.
    const at::Tensor ref_grad = ref_w.grad().narrow(0, first, local).to(at::kFloat);
    const at::Tensor grad = mine_w.grad().defined() ? mine_w.grad().to(at::kFloat) : at::zeros_like(ref_grad);
    EXPECT_TRUE(at::allclose(grad, ref_grad, tol, tol)) << what << ": " << name << " grads";
  }
}

TEST(MoEEquivalence, EveryModeAndCapacityPolicyMatchesOneProcess) {
  for (auto mode : {routing::SelectorMode::kRouter, routing::SelectorMode::kBlend, routing::SelectorMode::kTrustFirst})
    for (auto overflow : {routing::OverflowPolicy::kDropless, routing::OverflowPolicy::kDrop,
                          routing::OverflowPolicy::kReroute})
      run_case({mode, overflow, at::kFloat, at::kFloat, false});
}

TEST(MoEEquivalence, CommDtypesAndARankWithoutTokens) {
  run_case({routing::SelectorMode::kBlend, routing::OverflowPolicy::kDropless, at::kFloat, at::kBFloat16, false});
  run_case({routing::SelectorMode::kRouter, routing::OverflowPolicy::kDropless, at::kBFloat16, at::kBFloat16, true});
  run_case({routing::SelectorMode::kRouter, routing::OverflowPolicy::kDrop, at::kFloat, at::kHalf, true});
}

TEST(MoEEquivalence, EveryTokenToOneExpertLeavesOtherRanksAndExpertsEmpty) {
  for (auto overflow : {routing::OverflowPolicy::kDropless, routing::OverflowPolicy::kReroute})
    run_case({routing::SelectorMode::kRouter, overflow, at::kFloat, at::kFloat, false, /*top_k=*/1,
              /*zero_router=*/true});
}

TEST(MoEEquivalence, EachRankHoldsOnlyItsExperts) {
  auto comm = make_mpi_comm();
  model::MoELayerConfig cfg;
  cfg.hidden = 32;
  cfg.ffn = 48;
  cfg.experts = 4 * comm->size();
  cfg.dtype = at::kBFloat16;
  cfg.comm_dtype = at::kBFloat16;
  model::MoELayerImpl layer(cfg, *comm);
  int64_t bytes = 0;
  for (const auto& p : layer.experts->parameters()) bytes += p.numel() * static_cast<int64_t>(p.element_size());
  EXPECT_EQ(bytes, 3 * 32 * 48 * 4 * 2) << "3·H·F·(E/W) bf16 weights";
}

TEST(Dispatch, RoundTripWithIdentityExpertsReturnsTheInputAndItsGradient) {
  auto comm = make_mpi_comm();
  const int W = comm->size();
  const int64_t E = 2 * W, k = 2, T = 9 + comm->rank();
  dispatch::Dispatcher d(*comm, dispatch::ExpertLayout::make(E, W, comm->rank()), at::kFloat, at::kFloat);
  at::Generator gen = at::detail::createCPUGenerator(77 + comm->rank());
  at::Tensor x = at::randn({T, 8}, gen, at::kFloat).requires_grad_(true);
  // Distinct experts per token, some tokens sending everything to expert 0 (skew).
  at::Tensor experts = at::randint(0, E, {T, 1}, gen, at::TensorOptions().dtype(at::kLong));
  experts = at::cat({experts, (experts + 1) % E}, 1);
  experts[0][0] = 0;
  experts[0][1] = 1;
  const auto dispatched = d.dispatch(x, experts);
  const at::Tensor weights = at::full({T, k}, 1.0 / k, at::kFloat);
  const at::Tensor y = d.combine(dispatched.rows, dispatched.plan, weights, at::kFloat);
  EXPECT_TRUE(at::allclose(y, x, 1e-6, 1e-6));
  y.sum().backward();
  EXPECT_TRUE(at::allclose(x.grad(), at::ones_like(x), 1e-6, 1e-6));
}

TEST(Dispatch, ExpertsMustSplitEvenly) {
  auto comm = make_mpi_comm();
  EXPECT_THROW(dispatch::ExpertLayout::make(comm->size() + 1, comm->size(), comm->rank()), OptionError);
}

}  // namespace
}  // namespace trustep

namespace trustep {
namespace {

}  // namespace
}  // namespace trustep

#include "core/error.h"
#include "routing/router.h"
#include "routing/stats.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/full.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/tensor.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <limits>

namespace trustep::routing {
namespace {

RouterConfig router_config(c10::ScalarType dtype) {
  RouterConfig c;
  c.hidden = 16;
  c.experts = 6;
  c.dtype = dtype;
  c.layer = 2;
  c.rank = 1;
  return c;
}

TEST(Router, LogitsAreFp32ForEveryRouterDtypeAndProbsSumToOne) {
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    RouterImpl router(router_config(dtype));
    EXPECT_EQ(router.weight.scalar_type(), dtype);
    for (auto hidden_dtype : {at::kFloat, at::kBFloat16}) {
      const RouterOutput out = router.forward(at::randn({9, 16}, hidden_dtype));
      EXPECT_EQ(out.logits.scalar_type(), at::kFloat);
      EXPECT_EQ(out.probs.scalar_type(), at::kFloat);
      EXPECT_EQ(out.logits.sizes(), (c10::IntArrayRef{9, 6}));
      EXPECT_TRUE(at::allclose(out.probs.sum(1), at::ones({9}, at::kFloat), 1e-5, 1e-6));
    }
  }
}

TEST(Router, ZLossIsMeanSquaredLogSumExp) {
  RouterImpl router(router_config(at::kFloat));
  const at::Tensor hidden = at::randn({5, 16}, at::kFloat);
  const RouterOutput out = router.forward(hidden);
  double expected = 0;
  auto l = out.logits.accessor<float, 2>();
  for (int t = 0; t < 5; ++t) {
    double s = 0;
    for (int e = 0; e < 6; ++e) s += std::exp(static_cast<double>(l[t][e]));
    expected += std::log(s) * std::log(s);
  }
  EXPECT_NEAR(out.z_loss.item<float>(), expected / 5, 1e-4);
}

TEST(Router, GradientsReachTheRouterWeight) {
  RouterImpl router(router_config(at::kFloat));
  const RouterOutput out = router.forward(at::randn({4, 16}, at::kFloat));
  (out.probs.select(1, 0).sum() + out.z_loss).backward();
  ASSERT_TRUE(router.weight.grad().defined());
  EXPECT_GT(router.weight.grad().abs().sum().item<float>(), 0.0f);
}

TEST(Router, NonFiniteLogitsNameLayerAndRankWhenChecked) {
  auto cfg = router_config(at::kFloat);
  cfg.check_finite = true;
  RouterImpl router(cfg);
  at::Tensor hidden = at::randn({3, 16}, at::kFloat);
  hidden[1][4] = std::numeric_limits<float>::quiet_NaN();
  try {
    router.forward(hidden);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("NaN or Inf (layer 2, rank 1)"), std::string::npos) << e.what();
  }
  cfg.check_finite = false;
  RouterImpl unchecked(cfg);
  EXPECT_NO_THROW(unchecked.forward(hidden));
}

TEST(Router, BadShapesAndConfigsAreClearErrors) {
  RouterImpl router(router_config(at::kFloat));
  EXPECT_THROW(router.forward(at::randn({3, 15}, at::kFloat)), Error);
  auto cfg = router_config(at::kHalf);
  EXPECT_THROW(cfg.validate(), OptionError);
  cfg = router_config(at::kFloat);
  cfg.experts = 0;
  EXPECT_THROW(cfg.validate(), OptionError);
}

TEST(Router, LoadBalancingLossIsOneWhenPerfectlyBalanced) {
  const at::Tensor probs = at::full({8, 4}, 0.25, at::kFloat);
  const at::Tensor experts = at::tensor({0, 1, 2, 3, 0, 1, 2, 3}, at::kLong).view({8, 1});
  EXPECT_NEAR(load_balancing_loss(probs, experts).item<float>(), 1.0f, 1e-6);
  // All slots on expert 0 with probability 1 there: E · 1 · 1 = E.
  const at::Tensor hot = at::zeros({8, 4}, at::kFloat).index_fill_(1, at::tensor({0}, at::kLong), 1.0);
  EXPECT_NEAR(load_balancing_loss(hot, at::zeros({8, 1}, at::kLong)).item<float>(), 4.0f, 1e-6);
  // Unused slots (-1) are not counted: f = (0.5, 0.5, 0, 0), P = (0.5, 0.5, 0, 0) → 4 · 0.5 = 2.
  const at::Tensor partial = at::tensor({0, -1, 1, -1}, at::kLong).view({2, 2});
  const at::Tensor halves = at::tensor({0.5f, 0.5f, 0.0f, 0.0f, 0.5f, 0.5f, 0.0f, 0.0f}, at::kFloat).view({2, 4});
  EXPECT_NEAR(load_balancing_loss(halves, partial).item<float>(), 2.0f, 1e-6);
}

TEST(Router, BalanceBiasMovesTowardsTheMeanLoad) {
  at::Tensor bias = at::zeros({3}, at::kFloat);
  update_balance_bias(bias, at::tensor({10, 4, 1}, at::kLong), 0.01);
  auto b = bias.accessor<float, 1>();
  EXPECT_FLOAT_EQ(b[0], -0.01f);
  EXPECT_FLOAT_EQ(b[1], 0.01f);
  EXPECT_FLOAT_EQ(b[2], 0.01f);
}

TEST(LayerStats, AccumulatesSelectionsAndRoundTrips) {
  SelectorConfig cfg;
  cfg.experts = 4;
  cfg.top_k = 2;
  cfg.overflow = OverflowPolicy::kDrop;
  cfg.capacity_factor = 0.5;
  Selector selector(cfg, c10::Device(c10::kCPU));
  SelectorInputs in;
  in.probs = at::randn({10, 4}, at::kFloat).softmax(1);
  LayerStats stats(4, c10::Device(c10::kCPU));
  const Selection a = selector.select(in), b = selector.select(in);
  stats.add(a);
  stats.add(b);
  const auto j = stats.to_json();
  EXPECT_EQ(j["steps"], 2);
  EXPECT_EQ(j["tokens"], 20);
  EXPECT_EQ(j["dropped"], a.counts.dropped.item<int64_t>() * 2);
  EXPECT_EQ(j["slots"], (a.experts >= 0).sum().item<int64_t>() * 2);
  EXPECT_EQ(j["load"][0], a.counts.load[0].item<int64_t>() * 2);
  LayerStats copy(4, c10::Device(c10::kCPU));
  copy.load_state(stats.state("layer0."), "layer0.");
  EXPECT_EQ(copy.to_json(), j);
  EXPECT_THROW(copy.load_state(stats.state("layer0."), "layer1."), Error);
}

TEST(LayerStats, ContextTrustIsGatheredPerToken) {
  const at::Tensor effective = at::tensor({0.1f, 0.9f, 0.5f, 0.5f}, at::kFloat).view({2, 2});
  const at::Tensor evidenced = at::tensor({2, 0}, at::kLong);
  SelectorInputs in;
  fill_context_trust(in, effective, evidenced, at::tensor({1, 0, 1}, at::kLong), 2);
  EXPECT_TRUE(in.trust.equal(at::tensor({0.5f, 0.5f, 0.1f, 0.9f, 0.5f, 0.5f}, at::kFloat).view({3, 2})));
  EXPECT_TRUE(in.trusted.equal(at::tensor({0, 1, 0}, at::kLong).to(at::kBool)));
}

}  // namespace
}  // namespace trustep::routing

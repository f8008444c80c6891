#include "train/data.h"
#include "train/model_state.h"
#include "train/optimizer.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include "tests/unit/test_util.h"

#include <cmath>

namespace trustep::train {
namespace {

using trustep::testing::error_of;

// Two AdamW steps on a fp32 parameter against the formulas written out with doubles.
TEST(AdamW, MatchesTheDecoupledUpdateFormula) {
  AdamWConfig c;
  c.beta1 = 0.9;
  c.beta2 = 0.99;
  c.eps = 1e-8;
  c.weight_decay = 0.1;
  AdamW opt(c);
  at::Tensor w = at::tensor({1.0f, -2.0f});
  opt.add("w", w, /*decay=*/true);
  const double g[2][2] = {{0.5, -1.0}, {0.25, 2.0}};
  double ref[2] = {1.0, -2.0}, m[2] = {0, 0}, v[2] = {0, 0};
  const double lr = 0.01, scale = 0.5;
  for (int step = 1; step <= 2; ++step) {
    opt.slots()[0].grad = at::tensor({static_cast<float>(g[step - 1][0]), static_cast<float>(g[step - 1][1])});
    opt.step(lr, scale);
    for (int i = 0; i < 2; ++i) {
      const double gi = g[step - 1][i] * scale;
      m[i] = c.beta1 * m[i] + (1 - c.beta1) * gi;
      v[i] = c.beta2 * v[i] + (1 - c.beta2) * gi * gi;
      ref[i] *= 1 - lr * c.weight_decay;
      ref[i] -= lr * (m[i] / (1 - std::pow(c.beta1, step))) / (std::sqrt(v[i] / (1 - std::pow(c.beta2, step))) + c.eps);
    }
  }
  EXPECT_EQ(opt.steps(), 2);
  EXPECT_NEAR(w[0].item<float>(), ref[0], 1e-6);
  EXPECT_NEAR(w[1].item<float>(), ref[1], 1e-6);
}

// bf16 parameters update an fp32 master and take its rounding; a missing gradient is zero.
TEST(AdamW, Bf16ParametersKeepAnFp32Master) {
  AdamW opt(AdamWConfig{});
  at::Tensor w = at::full({4}, 1.0, at::kBFloat16);
  at::Tensor none = at::ones({2});
  opt.add("w", w, false);
  opt.add("none", none, false);
  EXPECT_EQ(opt.slots()[0].master.scalar_type(), at::kFloat);
  EXPECT_FALSE(opt.slots()[0].master.is_same(w));
  EXPECT_TRUE(opt.slots()[1].master.is_same(none));
  for (int i = 0; i < 3; ++i) {
    opt.slots()[0].grad = at::full({4}, 1.0);
    opt.step(1e-4, 1.0);
  }
  // 3 updates of ~1e-4 each: lost in bf16 (1 + 3e-4 rounds to 1) but kept by the master.
  EXPECT_LT(opt.slots()[0].master[0].item<float>(), 1.0f - 2e-4f);
  EXPECT_TRUE(at::equal(w, opt.slots()[0].master.to(at::kBFloat16)));
  EXPECT_TRUE(at::equal(none, at::ones({2})));  // zero gradient, no decay: unchanged
}

TEST(AdamW, OptionErrorsNameTheOption) {
  AdamWConfig c;
  c.beta2 = 1.0;
  EXPECT_NE(error_of<OptionError>([&] { c.validate(); }).find("'--beta2'"), std::string::npos);
}

TEST(LearningRate, WarmsUpLinearlyThenFollowsACosineToTheMinimum) {
  EXPECT_DOUBLE_EQ(warmup_cosine_lr(0, 10, 110, 1.0, 0.1), 0.1);
  EXPECT_DOUBLE_EQ(warmup_cosine_lr(9, 10, 110, 1.0, 0.1), 1.0);
  EXPECT_DOUBLE_EQ(warmup_cosine_lr(10, 10, 110, 1.0, 0.1), 1.0);
  EXPECT_NEAR(warmup_cosine_lr(60, 10, 110, 1.0, 0.1), 0.55, 1e-12);  // half way down the cosine
  EXPECT_DOUBLE_EQ(warmup_cosine_lr(110, 10, 110, 1.0, 0.1), 0.1);
  EXPECT_DOUBLE_EQ(warmup_cosine_lr(500, 10, 110, 1.0, 0.1), 0.1);    // past the end: the minimum
}

TEST(ModelState, ExpertBanksAreNamedByGlobalExpert) {
  EXPECT_EQ(global_expert_name("layers.3.moe.experts.gate", 17), "layers.3.moe.experts.17.gate");
  EXPECT_EQ(global_expert_name("layers.0.moe.experts.down", 0), "layers.0.moe.experts.0.down");
}

TEST(Data, ContextOfPromptFollowsTheTaskTag) {
  EXPECT_EQ(context_of_prompt("cpy:abc="), 0);
  EXPECT_EQ(context_of_prompt("rev:abc="), 1);
  EXPECT_EQ(context_of_prompt("rot:abc="), 5);
  EXPECT_EQ(context_of_prompt("hello"), -1);
  EXPECT_EQ(context_of_prompt("xyz:abc="), -1);
}

}  // namespace
}  // namespace trustep::train

#include "comm/communicator.h"
#include "core/error.h"
#include "core/safetensors.h"
#include "model/moe_layer.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>
#include "tests/unit/test_util.h"

#include <algorithm>

namespace trustep::model {
namespace {

using trustep::testing::make_self;

MoELayerConfig small(c10::ScalarType dtype, c10::ScalarType router_dtype, uint64_t seed = 1) {
  MoELayerConfig c;
  c.hidden = 12;
  c.ffn = 20;
  c.experts = 4;
  c.top_k = 2;
  c.dtype = dtype;
  c.comm_dtype = dtype;
  c.router_dtype = router_dtype;
  c.seed = seed;
  return c;
}

TEST(MoELayer, KeepsShapeAndDtypeWithoutSilentPromotion) {
  auto comm = make_self();
  for (auto [dtype, router] : {std::pair{at::kFloat, at::kFloat}, std::pair{at::kBFloat16, at::kFloat},
                               std::pair{at::kBFloat16, at::kBFloat16}}) {
    MoELayerImpl layer(small(dtype, router), *comm);
    const at::Tensor x = at::randn({3, 5, 12}, at::kFloat).to(dtype);
    const MoEOutput out = layer.forward(x);
    EXPECT_EQ(out.hidden.sizes(), x.sizes());
    EXPECT_EQ(out.hidden.scalar_type(), dtype) << "hidden " << c10::toString(dtype) << " router " << c10::toString(router);
    EXPECT_EQ(out.selection.weights.scalar_type(), at::kFloat);
    EXPECT_EQ(out.z_loss.scalar_type(), at::kFloat);
    EXPECT_EQ(out.selection.experts.size(0), 15);
  }
}

TEST(MoELayer, LoadsHuggingFaceWeightsAndReproducesTheLayer) {
  auto comm = make_self();
  MoELayerImpl source(small(at::kFloat, at::kFloat, 1), *comm);
  const std::string path = ::testing::TempDir() + "moe_layer.safetensors";
  const std::string prefix = "model.layers.0.mlp.";
  experts::save_hf(*source.experts, path, prefix);
  auto file = load_safetensors(path);
  file.tensors[prefix + "gate.weight"] = source.router->weight.detach();
  save_safetensors(path, file.tensors);

  MoELayerImpl loaded(small(at::kFloat, at::kFloat, 99), *comm);
  const at::Tensor x = at::randn({7, 12}, at::kFloat);
  EXPECT_FALSE(loaded.forward(x).hidden.equal(source.forward(x).hidden));
  loaded.load_hf(path, prefix);
  EXPECT_TRUE(loaded.forward(x).hidden.equal(source.forward(x).hidden));
  EXPECT_THROW(loaded.load_hf(path, "model.layers.1.mlp."), Error);
}

TEST(MoELayer, PoisonReplacesOnlyThePoisonedExpertsRowsWithNoiseOfTheSameScale) {
  auto comm = make_self();
  MoELayerImpl layer(small(at::kFloat, at::kFloat), *comm);
  const at::Tensor x = at::randn({64, 12}, at::kFloat);
  const MoEOutput clean = layer.forward(x);
  const int64_t bad = 1;
  layer.set_poison({bad}, 7);
  EXPECT_TRUE(layer.poisoned());
  const MoEOutput poisoned = layer.forward(x);
  const at::Tensor experts = clean.selection.experts;  // [T, k]; same selection (the router is untouched)
  ASSERT_TRUE(experts.equal(poisoned.selection.experts));
  const at::Tensor hit = (experts == bad).any(1);  // [T]
  ASSERT_GT(hit.sum().item<int64_t>(), 1);
  ASSERT_LT(hit.sum().item<int64_t>(), 64);
  const at::Tensor hit_rows = hit.nonzero().squeeze(1), miss_rows = hit.logical_not().nonzero().squeeze(1);
  auto at_rows = [](const at::Tensor& t, const at::Tensor& r) { return t.index_select(0, r); };
  EXPECT_TRUE(at_rows(poisoned.hidden, miss_rows).equal(at_rows(clean.hidden, miss_rows)));
  EXPECT_FALSE(at_rows(poisoned.hidden, hit_rows).allclose(at_rows(clean.hidden, hit_rows)));

  // Recover the noise rows: out_t = clean_t + w_t · (noise_t − y_t), y the expert's real output.
  const at::Tensor rows = at_rows(x, hit_rows);  // [n, H]
  const int64_t n = rows.size(0);
  at::Tensor y;
  {
    at::NoGradGuard no_grad;
    y = layer.experts->forward(rows, {0, n, 0, 0});  // [n, H] expert 1 only
  }
  const at::Tensor w = at_rows((clean.selection.weights * (experts == bad)).sum(1), hit_rows).unsqueeze(1);  // [n, 1]
  const at::Tensor noise = ((at_rows(poisoned.hidden, hit_rows) - at_rows(clean.hidden, hit_rows)) / w + y).detach();
  const double ratio = noise.std().item<double>() / y.std().item<double>();
  EXPECT_GT(ratio, 0.7);
  EXPECT_LT(ratio, 1.4);
  EXPECT_LT(noise.mean().abs().item<double>(), 0.5 * y.std().item<double>());

  // Reproducible: the same seed restarts the same sequence; each call draws fresh noise.
  const at::Tensor second = layer.forward(x).hidden;
  EXPECT_FALSE(second.equal(poisoned.hidden));
  layer.set_poison({bad}, 7);
  EXPECT_TRUE(layer.forward(x).hidden.equal(poisoned.hidden));
  layer.set_call_counter(1);
  EXPECT_TRUE(layer.forward(x).hidden.equal(second));
  layer.set_poison({bad}, 8);
  EXPECT_FALSE(layer.forward(x).hidden.equal(poisoned.hidden));
  layer.clear_poison();
  EXPECT_TRUE(layer.forward(x).hidden.equal(clean.hidden));
  EXPECT_NE(testing::error_of<OptionError>([&] { layer.set_poison({4}, 0); }).find("--poison-experts"),
            std::string::npos);
}

TEST(MoELayer, PoisonedRowsGiveNoGradientToTheirExpertButStillToInputsAndGate) {
  auto comm = make_self();
  for (std::vector<int64_t> bad : {std::vector<int64_t>{2}, std::vector<int64_t>{0, 1, 2, 3}}) {
    MoELayerImpl layer(small(at::kFloat, at::kFloat), *comm);
    layer.set_poison(bad, 3);
    const at::Tensor x = at::randn({32, 12}, at::kFloat).requires_grad_(true);
    layer.forward(x).hidden.pow(2).sum().backward();
    ASSERT_TRUE(layer.experts->gate.grad().defined());
    for (int64_t e = 0; e < 4; ++e) {
      const bool poisoned = std::find(bad.begin(), bad.end(), e) != bad.end();
      EXPECT_EQ(layer.experts->gate.grad()[e].abs().sum().item<double>() == 0.0, poisoned) << "expert " << e;
    }
    EXPECT_GT(layer.router->weight.grad().abs().sum().item<double>(), 0.0);
    ASSERT_TRUE(x.grad().defined());
    EXPECT_GT(x.grad().abs().sum().item<double>(), 0.0);
  }
}

}  // namespace
}  // namespace trustep::model

#include "comm/communicator.h"
#include "core/error.h"
#include "core/safetensors.h"
#include "model/moe_layer.h"

#include <ATen/ops/randn.h>
#include <gtest/gtest.h>
#include "tests/unit/test_util.h"

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

}  // namespace
}  // namespace trustep::model

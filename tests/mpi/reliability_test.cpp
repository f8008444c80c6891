// Faults that reach the library rather than the CLI (docs/reliability.md): ranks that build an
// MoE layer with different settings, and NaN in one rank's activations under check_finite.
// Each must become the same error on every rank, naming what differs and where, with no hang.
#include "comm/communicator.h"
#include "core/error.h"
#include "model/moe_layer.h"
#include "mpi_test_util.h"

#include <ATen/ops/randn.h>
#include <gtest/gtest.h>

#include <cmath>

namespace trustep {
namespace {

using testing::make_mpi_comm;
using testing::message_of;
using testing::same_on_every_rank;

TEST(Settings, DifferencesAreNamedWithEachRanksValue) {
  auto comm = make_mpi_comm();
  const int r = comm->rank();
  EXPECT_NO_THROW(comm->check_same_settings("a=1\nb=2\n", "the test settings"));
  // Rank 1 changes b, the last rank adds c: both keys are named, with who holds what.
  std::string mine = r == 1 ? "a=1\nb=3\n" : "a=1\nb=2\n";
  if (r == comm->size() - 1 && r > 1) mine += "c=4\n";
  const std::string msg = message_of<CommError>([&] { comm->check_same_settings(mine, "the test settings"); });
  const int last = comm->size() - 1;
  std::string but_one = "0", but_last = "0";  // every rank but 1; every rank but the last
  for (int q = 2; q <= last; ++q) but_one += fmt::format(",{}", q);
  for (int q = 1; q < last; ++q) but_last += fmt::format(",{}", q);
  std::string expected = fmt::format("ranks disagree on the test settings: 'b' is '2' on rank{} {}, '3' on rank 1",
                                     last > 1 ? "s" : "", but_one);
  if (last > 1) expected += fmt::format("; 'c' is not set on ranks {}, '4' on rank {}", but_last, last);
  EXPECT_EQ(msg, expected + " [raised on every rank]");
  EXPECT_TRUE(same_on_every_rank(msg));
  EXPECT_NO_THROW(comm->barrier("after.settings"));  // still usable
}

model::MoELayerConfig layer_config() {
  model::MoELayerConfig c;
  c.hidden = 16;
  c.ffn = 24;
  c.experts = 4;
  c.top_k = 2;
  c.layer = 3;
  c.seed = 5;
  return c;
}

TEST(LayerSettings, RanksBuildingDifferentLayersFailTogether) {
  auto comm = make_mpi_comm();
  struct Change {
    const char* others;  // "'key' is 'value' on rank(s)" as every rank but 1 holds it
    const char* rank1;   // "'value' on rank 1"
    void (*apply)(model::MoELayerConfig&);
  };
  const Change changes[] = {
      {"'hidden' is '16' on rank", "'32' on rank 1", [](model::MoELayerConfig& c) { c.hidden = 32; }},
      {"'dtype' is 'fp32' on rank", "'bf16' on rank 1",
       [](model::MoELayerConfig& c) { c.dtype = c10::ScalarType::BFloat16; }},
      {"'comm_dtype' is 'fp32' on rank", "'bf16' on rank 1",
       [](model::MoELayerConfig& c) { c.comm_dtype = c10::ScalarType::BFloat16; }},
      {"'experts' is '4' on rank", "'8' on rank 1", [](model::MoELayerConfig& c) { c.experts = 8; }},
      {"'mode' is 'router' on rank", "'blend' on rank 1",
       [](model::MoELayerConfig& c) { c.selector.mode = routing::SelectorMode::kBlend; }},
  };
  for (const auto& change : changes) {
    model::MoELayerConfig c = layer_config();
    if (comm->rank() == 1) change.apply(c);
    const std::string msg = message_of<CommError>([&] { model::MoELayer layer(c, *comm); });
    EXPECT_EQ(msg.find(std::string("ranks disagree on the settings of MoE layer 3: ") + change.others), 0u) << msg;
    EXPECT_NE(msg.find(std::string(change.rank1) + " [raised on every rank]"), std::string::npos) << msg;
    EXPECT_TRUE(same_on_every_rank(msg)) << msg;
  }
  EXPECT_NO_THROW(model::MoELayer(layer_config(), *comm));
}

TEST(CheckFinite, NaNOnOneRankStopsEveryRankNamingIt) {
  auto comm = make_mpi_comm();
  model::MoELayerConfig c = layer_config();
  c.check_finite = true;
  model::MoELayer layer(c, *comm);
  at::Tensor x = at::randn({6, c.hidden});
  EXPECT_NO_THROW(layer->forward(x));  // finite: passes
  if (comm->rank() == 1) x[2][5] = std::nan("");
  const std::string msg = message_of<Error>([&] { layer->forward(x); });
  EXPECT_NE(msg.find(fmt::format("MoE layer 3 (--check-finite): failed on 1 of {} ranks: rank 1: router logits "
                                 "contain NaN or Inf (layer 3, rank 1): 1 of 6 tokens",
                                 comm->size())),
            std::string::npos)
      << msg;
  EXPECT_TRUE(same_on_every_rank(msg)) << msg;
  // Without the check nothing syncs and nothing throws: the NaN flows on (the trainer's
  // non-finite loss check is the backstop).
  model::MoELayerConfig unchecked = layer_config();
  model::MoELayer plain(unchecked, *comm);
  EXPECT_NO_THROW(plain->forward(x));
}

}  // namespace
}  // namespace trustep

// `trustep bench layer`: option validation names the option; a tiny run on a self communicator
// yields records with positive times and a plausible GEMM-bound ratio.
#include "bench/layer_bench.h"
#include "bench/report.h"
#include "comm/self_communicator.h"
#include "core/error.h"

#include <gtest/gtest.h>

namespace trustep::bench {
namespace {

void expect_option_error(const LayerBenchArgs& args, const std::string& needle) {
  try {
    validate(args);
    ADD_FAILURE() << "no OptionError, expected one containing: " << needle;
  } catch (const OptionError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(BenchLayer, ValidationNamesTheBadOption) {
  auto with = [](auto edit) {
    LayerBenchArgs a;
    edit(a);
    return a;
  };
  expect_option_error(with([](auto& a) { a.tokens = "16,many"; }), "option '--tokens'");
  expect_option_error(with([](auto& a) { a.tokens = "0"; }), "option '--tokens'");
  expect_option_error(with([](auto& a) { a.hidden = 0; }), "option '--hidden'");
  expect_option_error(with([](auto& a) { a.ffn = -1; }), "option '--ffn'");
  expect_option_error(with([](auto& a) { a.experts = 0; }), "option '--experts'");
  expect_option_error(with([](auto& a) { a.top_k = 9; }), "option '--top-k'");
  expect_option_error(with([](auto& a) { a.dtype = "fp16"; }), "option '--dtype'");
  expect_option_error(with([](auto& a) { a.dtype = "int8"; }), "option '--dtype'");
  expect_option_error(with([](auto& a) { a.comm_dtype = "int64"; }), "option '--comm-dtype'");
  expect_option_error(with([](auto& a) { a.selector = "greedy"; }), "option '--selector'");
  expect_option_error(with([](auto& a) { a.iters = 0; }), "option '--iters'");
  expect_option_error(with([](auto& a) { a.warmup = -1; }), "option '--warmup'");
  expect_option_error(with([](auto& a) { a.json = "/nonexistent-dir/x.json"; }), "option '--json'");

  const auto d = validate(LayerBenchArgs{});
  EXPECT_EQ(d.tokens, (std::vector<int64_t>{16, 256, 4096}));
  EXPECT_EQ(d.dtype, c10::ScalarType::Float);
  EXPECT_EQ(d.comm_dtype, c10::ScalarType::Float);
  const auto b = validate(with([](auto& a) { a.dtype = "bf16"; }));
  EXPECT_EQ(b.comm_dtype, c10::ScalarType::BFloat16);  // follows --dtype
}

// Mechanics only: every field is filled. No timing bound is asserted (shared, noisy machines);
// the ratios are for `trustep bench layer` to report.
TEST(BenchLayer, TinyRunFillsEveryRecord) {
  comm::SelfCommunicator comm(comm::CommOptions{});
  LayerBenchOptions o;
  o.tokens = {128};
  o.hidden = 64;
  o.ffn = 128;
  o.experts = 4;
  o.top_k = 2;
  o.iters = 2;
  o.warmup = 1;
  o.backward = true;
  o.compare_dtypes = true;
  const auto records = measure_layer(comm, o);
  ASSERT_EQ(records.size(), 2u);  // fp32, bf16
  EXPECT_EQ(records[0].dtype, "fp32");
  EXPECT_EQ(records[1].dtype, "bf16");
  EXPECT_EQ(records[1].comm_dtype, "bf16");
  for (const auto& r : records) {
    EXPECT_EQ(r.world, 1);
    EXPECT_EQ(r.expert_rows, 128 * 2);  // router mode, dropless: every slot reaches an expert
    EXPECT_GT(r.fwd_us, 0);
    EXPECT_GT(r.fwd_bwd_us, 0);
    EXPECT_GT(r.gemm_fwd_us, 0);
    EXPECT_GT(r.gemm_fwd_bwd_us, 0);
    EXPECT_GT(r.raw_a2a_us, 0);
    EXPECT_GT(r.tokens_per_s, 0);
    EXPECT_GT(r.gemm_bound_ratio, 0);
    // Every phase of the forward+backward step was seen; the expert weights are E·3·H·F elements.
    ASSERT_EQ(r.phase_us.size(), kLayerPhases.size());
    for (size_t p = 0; p < r.phase_us.size(); ++p) EXPECT_GT(r.phase_us[p], 0) << kLayerPhases[p];
    EXPECT_DOUBLE_EQ(r.expert_weight_mib, 4.0 * 3 * 64 * 128 * (r.dtype == "fp32" ? 4 : 2) / (1024.0 * 1024.0));
    EXPECT_GT(r.peak_rss_mib, 0);
    EXPECT_GT(r.init_peak_rss_mib, 0);
  }
  EXPECT_GT(records[1].bf16_over_fp32_ratio, 0);

  // Forward only, trust-aware selector: still a complete record.
  o.compare_dtypes = false;
  o.backward = false;
  o.selector = routing::SelectorMode::kBlend;
  const auto fwd = measure_layer(comm, o);
  ASSERT_EQ(fwd.size(), 1u);
  EXPECT_GT(fwd[0].fwd_us, 0);
  EXPECT_EQ(fwd[0].fwd_bwd_us, 0);
  EXPECT_GT(fwd[0].gemm_bound_ratio, 0);
  EXPECT_EQ(fwd[0].phase_us.back(), 0);  // moe.exchange.bwd: no backward was timed
}

TEST(BenchLayer, ExpertsThatDoNotSplitOverTheRanksNameTheOption) {
  comm::SelfCommunicator comm(comm::CommOptions{});
  LayerBenchOptions o;
  o.tokens = {8};
  o.experts = 0;
  EXPECT_THROW(measure_layer(comm, o), OptionError);
}

}  // namespace
}  // namespace trustep::bench

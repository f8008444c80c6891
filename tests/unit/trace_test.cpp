// core/trace: spans nest and carry layer and step; nothing is recorded while off; the Chrome
// trace document is valid JSON with one process per rank; the MoE layer and the training step
// record the phases the benchmarks break their time into; `bench train` fills its record.
#include "bench/report.h"
#include "bench/train_bench.h"
#include "core/trace.h"
#include "model/moe_layer.h"
#include "train/data.h"
#include "test_util.h"

#include <ATen/ops/randn.h>
#include <ATen/ops/sum.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <set>
#include <thread>

namespace trustep {
namespace {

class TraceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    trace::clear();
    trace::set_step(-1);
  }
  void TearDown() override {
    trace::enable(false);
    trace::clear();
    trace::set_step(-1);
  }
};

TEST_F(TraceTest, NothingIsRecordedWhileOff) {
  { trace::Scope s("test.off"); }
  EXPECT_TRUE(trace::spans().empty());
}

TEST_F(TraceTest, SpansNestAndCarryLayerAndStep) {
  trace::set_origin();
  trace::enable(true);
  trace::set_step(7);
  {
    trace::Scope outer("test.outer");
    {
      trace::Scope inner("test.inner", 3);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    { trace::Scope again("test.inner", 3); }
  }
  trace::enable(false);
  const auto spans = trace::spans();
  ASSERT_EQ(spans.size(), 3u);
  // Spans are stored as they end: the inner ones first.
  EXPECT_STREQ(spans[0].name, "test.inner");
  EXPECT_STREQ(spans[2].name, "test.outer");
  EXPECT_EQ(spans[0].depth, 1);
  EXPECT_EQ(spans[2].depth, 0);
  EXPECT_EQ(spans[0].layer, 3);
  EXPECT_EQ(spans[2].layer, -1);
  for (const auto& s : spans) EXPECT_EQ(s.step, 7);
  EXPECT_GE(spans[0].dur_ns, 2'000'000);
  EXPECT_GE(spans[2].dur_ns, spans[0].dur_ns + spans[1].dur_ns);
  EXPECT_LE(spans[2].start_ns, spans[0].start_ns);
  EXPECT_GE(spans[1].start_ns, spans[0].start_ns + spans[0].dur_ns);

  const auto totals = trace::totals(spans);
  EXPECT_EQ(totals.at("test.inner").count, 2);
  EXPECT_DOUBLE_EQ(totals.at("test.inner").us, (spans[0].dur_ns + spans[1].dur_ns) * 1e-3);
}

TEST_F(TraceTest, ChromeDocumentIsValidJsonWithOneProcessPerRank) {
  trace::set_origin();
  trace::enable(true);
  { trace::Scope s("moe.route", 1); }
  trace::enable(false);
  const auto spans = trace::spans();
  const std::string doc = trace::chrome_document({trace::chrome_events(spans, 0), trace::chrome_events(spans, 1)},
                                                 "a \"quoted\" title");
  const auto j = nlohmann::json::parse(doc);
  std::set<int> pids;
  int complete = 0;
  for (const auto& e : j.at("traceEvents")) {
    pids.insert(e.at("pid").get<int>());
    if (e.at("ph") == "X") {
      ++complete;
      EXPECT_EQ(e.at("name"), "moe.route");
      EXPECT_EQ(e.at("cat"), "moe");
      EXPECT_EQ(e.at("args").at("layer"), 1);
      EXPECT_GE(e.at("dur").get<double>(), 0.0);
    } else {
      EXPECT_EQ(e.at("ph"), "M");
      EXPECT_EQ(e.at("args").at("name"), fmt::format("rank {}", e.at("pid").get<int>()));
    }
  }
  EXPECT_EQ(complete, 2);
  EXPECT_EQ(pids, (std::set<int>{0, 1}));
  EXPECT_EQ(j.at("otherData").at("title"), "a \"quoted\" title");
}

TEST_F(TraceTest, MoELayerRecordsEveryPhaseForwardAndBackward) {
  auto comm = testing::make_self();
  model::MoELayerConfig cfg;
  cfg.hidden = 16;
  cfg.ffn = 32;
  cfg.experts = 4;
  cfg.top_k = 2;
  cfg.layer = 2;
  model::MoELayerImpl layer(cfg, *comm);
  const at::Tensor x = at::randn({10, 16}).requires_grad_(true);
  const auto phases = bench::traced_phases([&] { at::sum(layer.forward(x).hidden).backward(); }, bench::kLayerPhases);
  ASSERT_EQ(phases.size(), bench::kLayerPhases.size());
  for (size_t i = 0; i < phases.size(); ++i) EXPECT_GT(phases[i], 0.0) << bench::kLayerPhases[i];
  std::set<int> layers;
  for (const auto& s : trace::spans()) layers.insert(s.layer);
  EXPECT_EQ(layers, (std::set<int>{2}));
  EXPECT_FALSE(trace::enabled());  // traced_phases turns recording off again
}

TEST_F(TraceTest, BenchTrainFillsItsRecordAndWritesTheTrace) {
  auto comm = testing::make_self();
  train::TrainConfig c;
  c.model.vocab = train::kVocabSize;
  c.model.hidden = 32;
  c.model.layers = 2;
  c.model.heads = 2;
  c.model.kv_heads = 1;
  c.model.ffn = 64;
  c.model.experts = 4;
  c.model.top_k = 2;
  c.model.max_seq = 16;
  c.model.selector.experts = 4;
  c.model.selector.top_k = 2;
  c.batch = 2;
  c.steps = 10;
  c.warmup = 1;
  c.trust.layers = 2;
  c.trust.experts = 4;
  const std::string trace_path = (std::filesystem::temp_directory_path() / "trustep_trace_test.json").string();
  c.trace = trace_path;
  bench::TrainBenchArgs a;
  a.iters = 2;
  a.warmup_iters = 1;
  const auto r = bench::measure_train(*comm, c, a);
  EXPECT_EQ(r.world, 1);
  EXPECT_EQ(r.tokens_per_step, 2 * 16);
  EXPECT_GT(r.step_us, 0);
  for (const char* phase : {"train.forward", "train.backward", "train.optimizer", "train.trust", "moe.route",
                            "moe.experts", "moe.exchange", "moe.exchange.bwd"})
    EXPECT_GT(r.phase_us.at(phase), 0.0) << phase;
  // Inside the step: forward <= step, and the MoE spans inside the forward.
  EXPECT_LE(r.phase_us.at("train.forward"), r.step_us);
  EXPECT_LE(r.phase_us.at("moe.route") + r.phase_us.at("moe.experts"), r.phase_us.at("train.forward"));
  // Per layer: counts, dispatch rows and combine rows forward, and the two row exchanges backward.
  EXPECT_EQ(r.exchanges_per_step, 5 * 2);
  EXPECT_GT(r.exchange_bytes_per_step, 0);
  EXPECT_GT(r.bare_exchange_us, 0);
  EXPECT_GT(r.peak_rss_mib, 0);

  std::ifstream in(trace_path);
  const auto doc = nlohmann::json::parse(in);
  std::set<int64_t> steps;
  for (const auto& e : doc.at("traceEvents"))
    if (e.at("ph") == "X" && e.at("name") == "train.step") steps.insert(e.at("args").at("step").get<int64_t>());
  EXPECT_EQ(steps, (std::set<int64_t>{1, 2}));  // the timed steps, after the untimed one
  std::filesystem::remove(trace_path);
}

}  // namespace
}  // namespace trustep

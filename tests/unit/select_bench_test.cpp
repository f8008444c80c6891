// `trustep bench select`: option validation, and proof that both baselines compute the same
// selection as routing::Selector (so the benchmark compares equal work): the C++ host loop
// bit-for-bit in experts and to 1e-6 in weights, the Python prototype in experts (and weights
// to 1e-5) when the project's Python with torch is present.
#include "bench/select_bench.h"
#include "core/error.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/allclose.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/full.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/softmax.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <stdexcept>
#include <unistd.h>

namespace trustep::bench {
namespace {

namespace fs = std::filesystem;
using routing::SelectorMode;

void expect_option_error(const SelectBenchArgs& args, const std::string& needle) {
  try {
    validate(args);
    ADD_FAILURE() << "no OptionError, expected one containing: " << needle;
  } catch (const OptionError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(BenchSelect, ValidationNamesTheBadOption) {
  auto with = [](auto edit) {
    SelectBenchArgs a;
    edit(a);
    return a;
  };
  expect_option_error(with([](auto& a) { a.tokens = "4096,zero"; }), "option '--tokens': 'zero'");
  expect_option_error(with([](auto& a) { a.tokens = "0"; }), "option '--tokens'");
  expect_option_error(with([](auto& a) { a.experts = "8,,64"; }), "option '--experts'");
  expect_option_error(with([](auto& a) { a.experts = "-8"; }), "option '--experts': '-8'");
  expect_option_error(with([](auto& a) { a.top_k = "2,1.5"; }), "option '--top-k': '1.5'");
  expect_option_error(with([](auto& a) { a.modes = "router,greedy"; }), "'greedy' for option '--modes'");
  expect_option_error(with([](auto& a) { a.alpha = 1.5; }), "option '--alpha'");
  expect_option_error(with([](auto& a) { a.epsilon = -0.1; }), "option '--epsilon'");
  expect_option_error(with([](auto& a) { a.iters = 0; }), "option '--iters'");
  expect_option_error(with([](auto& a) { a.warmup = -1; }), "option '--warmup'");
  expect_option_error(with([](auto& a) { a.impl = "cuda"; }), "option '--impl'");
  expect_option_error(with([](auto& a) { a.baselines = "prototype,numpy"; }), "option '--baselines': 'numpy'");
  expect_option_error(with([](auto& a) { a.baselines = "none,host-loop"; }), "option '--baselines'");
  expect_option_error(with([](auto& a) { a.prototype_max_tokens = 0; }), "option '--prototype-max-tokens'");
  expect_option_error(with([](auto& a) { a.python = "/no/such/python"; }), "option '--python'");
}

TEST(BenchSelect, ValidationDefaults) {
  const auto o = validate(SelectBenchArgs{});
  EXPECT_EQ(o.tokens, (std::vector<int64_t>{4096, 65536}));
  EXPECT_EQ(o.experts, (std::vector<int64_t>{8, 64, 128}));
  EXPECT_EQ(o.top_k, (std::vector<int64_t>{2, 8}));
  ASSERT_EQ(o.modes.size(), 3u);
  EXPECT_EQ(o.modes[2], SelectorMode::kTrustFirst);
  EXPECT_EQ(o.iters, 5);
  EXPECT_EQ(o.warmup, 1);
  EXPECT_DOUBLE_EQ(o.alpha, 0.5);
  EXPECT_DOUBLE_EQ(o.epsilon, 0.05);
  EXPECT_EQ(o.impl, routing::SelectorImpl::kAuto);
  EXPECT_TRUE(o.prototype);
  EXPECT_TRUE(o.host_loop);
  EXPECT_EQ(o.prototype_max_tokens, 4096);

  SelectBenchArgs a;
  a.tokens = "64k";
  a.baselines = "none";
  a.impl = "torch";
  const auto n = validate(a);
  EXPECT_EQ(n.tokens, (std::vector<int64_t>{65536}));
  EXPECT_FALSE(n.prototype);
  EXPECT_FALSE(n.host_loop);
  EXPECT_EQ(n.impl, routing::SelectorImpl::kTorchOps);
}

TEST(BenchSelect, NpyRoundTrip) {
  const fs::path dir = fs::temp_directory_path() / ("trustep-npy-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const at::Tensor f = at::rand({3, 5});
  const at::Tensor b = at::rand({7}) < 0.5;
  write_npy((dir / "f.npy").string(), f);
  write_npy((dir / "b.npy").string(), b);
  write_npy((dir / "l.npy").string(), at::arange(6, at::kLong).view({2, 3}));
  EXPECT_TRUE(at::equal(read_npy((dir / "f.npy").string()), f));
  EXPECT_TRUE(at::equal(read_npy((dir / "b.npy").string()), b));
  EXPECT_TRUE(at::equal(read_npy((dir / "l.npy").string()), at::arange(6, at::kLong).view({2, 3})));
  EXPECT_EQ(fs::file_size(dir / "f.npy"), 128u + 15 * 4);  // header padded to 64 bytes
  fs::remove_all(dir);
}

// Tie-free random rows: router logits and a per-context trust table whose selection scores
// (probs, and alpha·probs + (1 − alpha)·trust) have no two values closer than `gap` in any row,
// so every implementation's order is unambiguous despite rounding differences.
struct TieFree {
  PrototypeInputs proto;          // logits, trust table, context, trusted
  routing::SelectorInputs select;  // probs = softmax(logits), trust = table[context]
};

bool well_separated(const at::Tensor& row, double gap) {
  std::vector<float> v(row.data_ptr<float>(), row.data_ptr<float>() + row.numel());
  std::sort(v.begin(), v.end());
  for (size_t i = 1; i < v.size(); ++i)
    if (static_cast<double>(v[i]) - v[i - 1] < gap) return false;
  return true;
}

TieFree tie_free(int64_t T, int64_t E, double alpha, uint64_t seed, double gap) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  // One context per token (the table has T rows), so redrawing a row never changes another one.
  at::Tensor logits = at::empty({T, E}), table = at::empty({T, E});
  for (int64_t t = 0; t < T; ++t) {
    float* l = logits.data_ptr<float>() + t * E;
    float* r = table.data_ptr<float>() + t * E;
    for (int attempt = 0;; ++attempt) {
      if (attempt == 1000) throw std::runtime_error("cannot draw a tie-free row");
      for (int64_t e = 0; e < E; ++e) {
        l[e] = normal(rng);
        r[e] = uniform(rng);
      }
      const at::Tensor p = at::softmax(logits[t], 0);
      if (well_separated(p, gap) && well_separated(p * alpha + table[t] * (1.0 - alpha), gap)) break;
    }
  }
  TieFree c;
  c.proto.logits = logits;
  c.proto.trust_table = table;
  c.proto.context = at::arange(T, at::kLong);
  c.proto.trusted = at::ones({T}, at::kBool);
  c.select.probs = at::softmax(logits, 1);
  c.select.trust = table.index_select(0, c.proto.context);
  c.select.trusted = c.proto.trusted;
  return c;
}

routing::SelectorConfig config_for(SelectorMode mode, int64_t E, int64_t k) {
  routing::SelectorConfig c;
  c.mode = mode;
  c.experts = E;
  c.top_k = k;
  c.alpha = 0.5;
  return c;
}

TEST(BenchSelect, HostLoopSelectsExactlyWhatTheSelectorSelects) {
  uint64_t seed = 1;
  for (const int64_t E : {8, 64}) {
    const TieFree data = tie_free(300, E, 0.5, seed++, 1e-6);
    for (const int64_t k : {1, 2, 8}) {
      for (const SelectorMode mode : {SelectorMode::kRouter, SelectorMode::kBlend}) {
        SCOPED_TRACE(::testing::Message() << "E=" << E << " k=" << k << " mode=" << routing::mode_name(mode));
        const auto config = config_for(mode, E, k);
        const HostLoopSelection h = host_loop_select(config, data.select);
        for (const auto impl : {routing::SelectorImpl::kAuto, routing::SelectorImpl::kTorchOps}) {
          routing::Selector selector(config, c10::Device(c10::DeviceType::CPU));
          const routing::Selection s = selector.select(data.select, impl);
          EXPECT_TRUE(at::equal(h.experts, s.experts));
          EXPECT_TRUE(at::allclose(h.weights, s.weights, /*rtol=*/0, /*atol=*/1e-6));
          EXPECT_TRUE(at::allclose(h.scores, s.scores, 0, 1e-6));
          EXPECT_TRUE(at::equal(h.load, s.counts.load));
        }
      }
    }
  }
}

TEST(BenchSelect, HostLoopHandlesTrustFirstAndTies) {
  // Trust-first without exploration: trusted tokens by trust, the others by probs; all-equal
  // scores pick the lowest indices (the selector's tie rule).
  const int64_t T = 4, E = 6, k = 3;
  routing::SelectorInputs in;
  in.probs = at::full({T, E}, 1.0f / E);
  in.trust = at::rand({T, E});
  const bool trusted[T] = {true, false, true, false};
  in.trusted = at::from_blob(const_cast<bool*>(trusted), {T}, at::kBool).clone();
  auto config = config_for(SelectorMode::kTrustFirst, E, k);
  const HostLoopSelection h = host_loop_select(config, in);
  routing::Selector selector(config, c10::Device(c10::DeviceType::CPU));
  const routing::Selection s = selector.select(in);
  EXPECT_TRUE(at::equal(h.experts, s.experts));
  EXPECT_TRUE(at::equal(h.experts[1], at::arange(k, at::kLong)));
  EXPECT_TRUE(at::allclose(h.weights, s.weights, 0, 1e-6));
}

std::string repo_python() {
  const std::string root = find_repo_root();
  if (root.empty()) return "";
  const fs::path python = fs::path(root) / ".venv/bin/python";
  return ::access(python.c_str(), X_OK) == 0 ? python.string() : "";
}

TEST(BenchSelect, PrototypeScriptSelectsWhatTheSelectorSelects) {
  const std::string root = find_repo_root();
  if (root.empty()) GTEST_SKIP() << "bench/baselines/prototype_select.py not found above the test binary or cwd";
  const std::string python = repo_python();
  if (python.empty()) GTEST_SKIP() << "no " << root << "/.venv/bin/python: the prototype baseline needs it";
  const std::string script = (fs::path(root) / "bench/baselines/prototype_select.py").string();
  std::string versions;
  if (const std::string why = probe_prototype(python, script, &versions); !why.empty())
    GTEST_SKIP() << "Python with numpy and torch unavailable: " << why;

  const fs::path dir = fs::temp_directory_path() / ("trustep-proto-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  uint64_t seed = 100;
  for (const int64_t E : {8, 64}) {
    const int64_t T = 96;
    const TieFree data = tie_free(T, E, 0.5, seed++, 1e-5);
    write_prototype_inputs(dir.string(), data.proto, T);
    for (const int64_t k : {2, 8}) {
      for (const SelectorMode mode : {SelectorMode::kRouter, SelectorMode::kBlend}) {
        SCOPED_TRACE(::testing::Message() << "E=" << E << " k=" << k << " mode=" << routing::mode_name(mode));
        PrototypeRequest req;
        req.python = python;
        req.script = script;
        req.dir = dir.string();
        req.mode = routing::mode_name(mode);
        req.alpha = 0.5;
        req.top_k = k;
        req.tokens = T;
        req.write_selections = true;
        const PrototypeResult r = run_prototype(req);
        ASSERT_TRUE(r.ok) << r.reason;
        EXPECT_EQ(r.tokens, T);
        EXPECT_GT(r.seconds, 0);
        routing::Selector selector(config_for(mode, E, k), c10::Device(c10::DeviceType::CPU));
        const routing::Selection s = selector.select(data.select);
        ASSERT_EQ(r.experts.sizes(), s.experts.sizes());
        const at::Tensor differ = (r.experts != s.experts).any(1).nonzero();
        EXPECT_EQ(differ.numel(), 0) << differ.numel() << " token(s) differ; first: token "
                                     << (differ.numel() ? differ[0].item<int64_t>() : -1);
        EXPECT_TRUE(at::allclose(r.weights, s.weights, 0, 1e-5));
      }
    }
  }
  fs::remove_all(dir);
}

TEST(BenchSelect, PrototypeUnavailableIsAReasonNotAThrow) {
  PrototypeRequest req;
  req.python = "/no/such/python";
  req.script = "/no/such/script.py";
  req.dir = fs::temp_directory_path().string();
  const PrototypeResult r = run_prototype(req);
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.reason.find("/no/such/python"), std::string::npos) << r.reason;
  EXPECT_FALSE(probe_prototype("", "x").empty());
}

}  // namespace
}  // namespace trustep::bench

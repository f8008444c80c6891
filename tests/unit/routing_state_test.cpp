#include "comm/communicator.h"
#include "core/error.h"
#include "trust/routing_state.h"

#include <ATen/ops/full.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>
#include <gtest/gtest.h>
#include <cstdlib>
#include <nlohmann/json.hpp>

namespace trustep::trust {
namespace {

struct Model {
  TrustTable trust;
  std::vector<routing::ContextClassifier> contexts;
  std::vector<routing::LayerStats> stats;
  explicit Model(uint64_t seed) : trust(config(), c10::Device(c10::kCPU)) {
    for (int l = 0; l < 2; ++l) {
      contexts.emplace_back(routing::ContextConfig{3, 8, seed + l}, c10::Device(c10::kCPU), at::kFloat);
      stats.emplace_back(4, c10::Device(c10::kCPU));
    }
  }
  static TrustConfig config() {
    TrustConfig c;
    c.layers = 2;
    c.contexts = 3;
    c.experts = 4;
    c.min_evidence = 1;
    return c;
  }
  RoutingStateRefs refs() {
    RoutingStateRefs r{&trust, {}, {}};
    for (auto& c : contexts) r.contexts.push_back(&c);
    for (auto& s : stats) r.stats.push_back(&s);
    return r;
  }
};

std::string temp(const std::string& name) { return ::testing::TempDir() + name; }

TEST(RoutingState, SavesAndLoadsTrustContextsAndStats) {
  comm::CommOptions o;
  o.backend = comm::Backend::kSelf;
  auto comm = comm::make_communicator(o);
  Model trained(1);
  routing::SelectorConfig sc;
  sc.experts = 4;
  routing::Selector selector(sc, c10::Device(c10::kCPU));
  for (int step = 0; step < 3; ++step)
    for (int l = 0; l < 2; ++l) {
      const at::Tensor hidden = at::randn({20, 8}, at::kFloat);
      const at::Tensor ctx = trained.contexts[l].update(hidden, *comm);
      routing::SelectorInputs in;
      in.probs = at::randn({20, 4}, at::kFloat).softmax(1);
      const auto sel = selector.select(in);
      trained.stats[l].add(sel);
      trained.trust.credit(l, ctx, sel.experts, sel.weights, at::full({20}, 0.75, at::kFloat));
      trained.trust.apply_step(*comm);
    }
  const std::string path = temp("routing_state.safetensors");
  save_routing_state(path, trained.refs(), {{"run", "unit-test"}});

  Model fresh(99);
  EXPECT_NE(fresh.trust.digest(), trained.trust.digest());
  load_routing_state(path, fresh.refs());
  EXPECT_EQ(fresh.trust.digest(), trained.trust.digest());
  for (int l = 0; l < 2; ++l) {
    EXPECT_EQ(fresh.contexts[l].digest(), trained.contexts[l].digest()) << "layer " << l;
    EXPECT_EQ(fresh.stats[l].to_json(), trained.stats[l].to_json()) << "layer " << l;
  }
  EXPECT_EQ(load_safetensors(path).metadata.at("run"), "unit-test");
  // The CLI test of `trustep inspect` reads this file (ctest fixture).
  if (const char* out = std::getenv("TRUSTEP_ROUTING_STATE_OUT")) save_routing_state(out, trained.refs(), {{"run", "unit-test"}});
}

TEST(RoutingState, RefusesOtherFilesAndMissingLayers) {
  const std::string plain = temp("plain.safetensors");
  save_safetensors(plain, {{"x", at::full({2}, 1.0, at::kFloat)}});
  Model m(1);
  try {
    load_routing_state(plain, m.refs());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a trustep routing state"), std::string::npos) << e.what();
  }
  const std::string one_layer = temp("one_layer.safetensors");
  RoutingStateRefs r = m.refs();
  r.contexts.resize(1);
  r.stats.resize(1);
  save_routing_state(one_layer, r);
  try {
    load_routing_state(one_layer, m.refs());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no tensors for layer 1"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace trustep::trust

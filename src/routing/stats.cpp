#include "routing/stats.h"

#include "core/error.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <nlohmann/json.hpp>

namespace trustep::routing {
namespace {
constexpr const char* kCounterNames[] = {"steps",    "tokens",   "slots",    "substituted",
                                         "unfilled", "dropped",  "rerouted", "trust_routed"};
constexpr int64_t kCounters = 8;
}  // namespace

LayerStats::LayerStats(int64_t experts, c10::Device device) : experts_(experts) {
  const auto opts = at::TensorOptions().dtype(at::kLong).device(device);
  load_ = at::zeros({experts}, opts);
  counters_ = at::zeros({kCounters}, opts);
  explored_ = at::zeros({}, opts);
}

void LayerStats::add(const Selection& s) {
  const auto& c = s.counts;
  TRUSTEP_CHECK(c.load.size(0) == experts_, "LayerStats: selection has {} experts, stats {}", c.load.size(0),
                experts_);
  load_.add_(c.load);
  const at::Tensor one = at::ones_like(c.dropped);
  const at::Tensor tokens = at::full_like(c.dropped, s.experts.size(0));
  const at::Tensor slots = c.load.sum();
  counters_.add_(at::stack({one, tokens, slots, c.substituted, c.unfilled, c.dropped, c.rerouted, c.trust_routed}));
  explored_.add_(c.explored);
}

void LayerStats::reset() {
  load_.zero_();
  counters_.zero_();
  explored_.zero_();
}

nlohmann::json LayerStats::to_json() const {
  const at::Tensor counters = counters_.cpu(), load = load_.cpu();
  nlohmann::json j;
  for (int64_t i = 0; i < kCounters; ++i) j[kCounterNames[i]] = counters[i].item<int64_t>();
  j["explored"] = explored_.item<int64_t>();
  std::vector<int64_t> hist(load.data_ptr<int64_t>(), load.data_ptr<int64_t>() + experts_);
  j["load"] = hist;
  return j;
}

std::map<std::string, at::Tensor> LayerStats::state(const std::string& prefix) const {
  return {{prefix + "load", load_.cpu()},
          {prefix + "counters", counters_.cpu()},
          {prefix + "explored", explored_.cpu().reshape({1})}};
}

void LayerStats::load_state(const std::map<std::string, at::Tensor>& state, const std::string& prefix) {
  auto get = [&](const std::string& name, int64_t size) {
    auto it = state.find(prefix + name);
    TRUSTEP_CHECK(it != state.end(), "routing stats: tensor '{}{}' missing from the saved state", prefix, name);
    TRUSTEP_CHECK(it->second.scalar_type() == at::kLong && it->second.dim() == 1 && it->second.size(0) == size,
                  "routing stats: tensor '{}{}' must be int64 [{}]", prefix, name, size);
    return it->second;
  };
  load_.copy_(get("load", experts_));
  counters_.copy_(get("counters", kCounters));
  explored_.copy_(get("explored", 1).reshape({}));
}

void fill_context_trust(SelectorInputs& in, const at::Tensor& effective, const at::Tensor& evidenced,
                        const at::Tensor& ctx, int64_t top_k) {
  in.trust = effective.index_select(0, ctx);          // [T, E]
  in.trusted = evidenced.index_select(0, ctx) >= top_k;  // [T]
}

}  // namespace trustep::routing

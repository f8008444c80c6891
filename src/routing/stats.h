// Routing statistics of one layer, accumulated on the tokens' device without syncing; read
// (one copy to host) only when logged, inspected or saved.
#pragma once

#include "routing/selector.h"

#include <ATen/core/Tensor.h>
#include <nlohmann/json_fwd.hpp>

#include <map>
#include <string>

namespace trustep::routing {

class LayerStats {
 public:
  LayerStats(int64_t experts, c10::Device device);
  void add(const Selection& selection);  // no sync
  void reset();
  // Totals since the last reset: steps, tokens, slots, load per expert (histogram), substituted,
  // unfilled, dropped, rerouted, trust_routed, explored. Syncs.
  nlohmann::json to_json() const;
  std::map<std::string, at::Tensor> state(const std::string& prefix) const;  // CPU copies
  void load_state(const std::map<std::string, at::Tensor>& state, const std::string& prefix);

 private:
  int64_t experts_;
  at::Tensor load_;      // [E] int64
  at::Tensor counters_;  // [8] int64: steps, tokens, slots, substituted, unfilled, dropped, rerouted, trust_routed
  at::Tensor explored_;  // [] int64
};

// Per-token trust inputs of a layer from its context table: trust [T, E] = effective[ctx],
// trusted [T] = evidenced[ctx] >= k. effective [C, E] fp32, evidenced [C] int64, ctx [T] int64.
void fill_context_trust(SelectorInputs& in, const at::Tensor& effective, const at::Tensor& evidenced,
                        const at::Tensor& ctx, int64_t top_k);

}  // namespace trustep::routing

// One file for everything routing learns: the trust table, each layer's context centroids and
// each layer's routing statistics, as safetensors (docs/formats.md, "Routing state"). Every rank
// holds the same state, so rank 0 writes it and any rank (or `trustep inspect`) reads it.
#pragma once

#include "core/safetensors.h"
#include "routing/context.h"
#include "routing/stats.h"
#include "trust/trust_table.h"

#include <map>
#include <string>
#include <vector>

namespace trustep::trust {

constexpr const char* kRoutingStateFormat = "trustep.routing-state";
constexpr int kRoutingStateVersion = 1;

// Borrowed pointers to one model's routing state; null entries are not saved / not loaded.
struct RoutingStateRefs {
  TrustTable* trust = nullptr;
  std::vector<routing::ContextClassifier*> contexts;  // per layer
  std::vector<routing::LayerStats*> stats;            // per layer
};

// Writes "trust.*", "layer{l}.context.*", "layer{l}.stats.*" and metadata (format, version,
// layers, plus `extra`) atomically.
void save_routing_state(const std::string& path, const RoutingStateRefs& state,
                        const std::map<std::string, std::string>& extra = {});
// Loads every non-null part; a missing part, a wrong format/version or a shape mismatch is an
// error naming the file and the tensor, raised before anything is changed where possible.
void load_routing_state(const std::string& path, const RoutingStateRefs& state);

}  // namespace trustep::trust

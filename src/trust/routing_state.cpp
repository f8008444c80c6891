#include "trust/routing_state.h"

#include "core/error.h"

namespace trustep::trust {
namespace {

std::string layer_prefix(size_t layer) { return fmt::format("layer{}.", layer); }

}  // namespace

void save_routing_state(const std::string& path, const RoutingStateRefs& state,
                        const std::map<std::string, std::string>& extra) {
  TensorMap tensors;
  if (state.trust)
    for (auto& [name, t] : state.trust->state()) tensors[name] = t;
  for (size_t l = 0; l < state.contexts.size(); ++l)
    if (state.contexts[l])
      for (auto& [name, t] : state.contexts[l]->state()) tensors[layer_prefix(l) + name] = t;
  for (size_t l = 0; l < state.stats.size(); ++l)
    if (state.stats[l])
      for (auto& [name, t] : state.stats[l]->state(layer_prefix(l) + "stats.")) tensors[name] = t;
  std::map<std::string, std::string> metadata = extra;
  metadata["format"] = kRoutingStateFormat;
  metadata["version"] = std::to_string(kRoutingStateVersion);
  metadata["layers"] = std::to_string(std::max(state.contexts.size(), state.stats.size()));
  save_safetensors(path, tensors, metadata);
}

void load_routing_state(const std::string& path, const RoutingStateRefs& state) {
  const SafetensorsFile file = load_safetensors(path);
  auto meta = [&](const std::string& key) {
    auto it = file.metadata.find(key);
    return it == file.metadata.end() ? std::string() : it->second;
  };
  TRUSTEP_CHECK(meta("format") == kRoutingStateFormat, "{}: not a trustep routing state (format '{}', expected '{}')",
                path, meta("format"), kRoutingStateFormat);
  TRUSTEP_CHECK(meta("version") == std::to_string(kRoutingStateVersion),
                "{}: routing state version {} is not supported (this build reads {})", path, meta("version"),
                kRoutingStateVersion);
  // Per-layer parts see their own names without the layer prefix.
  auto layer_view = [&](size_t l) {
    TensorMap view;
    const std::string prefix = layer_prefix(l);
    for (const auto& [name, t] : file.tensors)
      if (name.rfind(prefix, 0) == 0) view[name.substr(prefix.size())] = t;
    TRUSTEP_CHECK(!view.empty(), "{}: no tensors for layer {} (the file has {} layers)", path, l, meta("layers"));
    return view;
  };
  try {
    if (state.trust) state.trust->load_state(file.tensors);
    for (size_t l = 0; l < state.contexts.size(); ++l)
      if (state.contexts[l]) state.contexts[l]->load_state(layer_view(l));
    for (size_t l = 0; l < state.stats.size(); ++l)
      if (state.stats[l]) state.stats[l]->load_state(layer_view(l), "stats.");
  } catch (const Error& e) {
    throw Error(fmt::format("{}: {}", path, e.what()), e.origin());
  }
}

}  // namespace trustep::trust

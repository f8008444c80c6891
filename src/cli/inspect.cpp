#include "cli/inspect.h"

#include "core/dtype.h"
#include "core/error.h"
#include "core/safetensors.h"
#include "trust/routing_state.h"

#include <ATen/ops/sort.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <iostream>

namespace trustep::cli {
namespace {

constexpr const char* kCounterNames[] = {"steps",    "tokens",  "slots",    "substituted",
                                         "unfilled", "dropped", "rerouted", "trust_routed"};

std::vector<int64_t> to_vector(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kLong).contiguous();
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

// Per layer: counters, load histogram and, per context, the `top` most trusted experts.
nlohmann::json describe_routing(const SafetensorsFile& f, int top) {
  nlohmann::json layers = nlohmann::json::array();
  const at::Tensor* trust = f.tensors.count("trust.value") ? &f.tensors.at("trust.value") : nullptr;
  const at::Tensor* evidence = f.tensors.count("trust.evidence") ? &f.tensors.at("trust.evidence") : nullptr;
  const int64_t n_layers = std::stoll(f.metadata.count("layers") ? f.metadata.at("layers") : "0");
  for (int64_t l = 0; l < n_layers; ++l) {
    nlohmann::json layer{{"layer", l}};
    const std::string prefix = fmt::format("layer{}.stats.", l);
    if (f.tensors.count(prefix + "counters")) {
      const auto counters = to_vector(f.tensors.at(prefix + "counters"));
      for (size_t i = 0; i < counters.size() && i < 8; ++i) layer["routing"][kCounterNames[i]] = counters[i];
      layer["routing"]["explored"] = to_vector(f.tensors.at(prefix + "explored"))[0];
      layer["routing"]["load"] = to_vector(f.tensors.at(prefix + "load"));
    }
    if (trust && evidence && l < trust->size(0)) {
      const at::Tensor tl = trust->select(0, l), el = evidence->select(0, l);  // [C, E]
      const at::Tensor order = std::get<1>(at::sort(tl, /*stable=*/true, 1, /*descending=*/true));
      for (int64_t c = 0; c < tl.size(0); ++c) {
        nlohmann::json experts = nlohmann::json::array();
        for (int64_t i = 0; i < std::min<int64_t>(top, tl.size(1)); ++i) {
          const int64_t e = order[c][i].item<int64_t>();
          experts.push_back({{"expert", e}, {"trust", tl[c][e].item<float>()}, {"evidence", el[c][e].item<float>()}});
        }
        layer["contexts"].push_back({{"context", c}, {"top", experts}});
      }
    }
    layers.push_back(layer);
  }
  return layers;
}

}  // namespace

void add_inspect_options(po::options_description& desc, po::positional_options_description& positional,
                         InspectArgs& a) {
  desc.add_options()
      ("file", po::value(&a.file), "safetensors file to describe (also the first positional argument)")
      ("top", po::value(&a.top)->default_value(a.top), "experts listed per context")
      ("json", po::bool_switch(&a.json), "print JSON instead of text");
  positional.add("file", 1);
}

void validate(const InspectArgs& a) {
  TRUSTEP_CHECK_AS(OptionError, !a.file.empty(), "inspect: a FILE is required (trustep inspect FILE)");
  TRUSTEP_CHECK_AS(OptionError, std::filesystem::exists(a.file), "invalid value '{}' for option '--file': no such file",
                   a.file);
  TRUSTEP_CHECK_AS(OptionError, a.top >= 1, "invalid value '{}' for option '--top': must be >= 1", a.top);
}

int run_inspect(const InspectArgs& a) {
  const SafetensorsFile f = load_safetensors(a.file);
  nlohmann::json out{{"file", a.file}, {"metadata", f.metadata}};
  for (const auto& [name, t] : f.tensors)
    out["tensors"][name] = {{"dtype", dtype_name(t.scalar_type())}, {"shape", t.sizes().vec()}};
  const bool routing = f.metadata.count("format") && f.metadata.at("format") == trust::kRoutingStateFormat;
  if (routing) out["layers"] = describe_routing(f, a.top);
  if (a.json) {
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  fmt::print("{}: {} tensors{}\n", a.file, f.tensors.size(),
             routing ? fmt::format(" (routing state v{}, {} layers)", f.metadata.at("version"),
                                   f.metadata.count("layers") ? f.metadata.at("layers") : "?")
                     : "");
  for (const auto& [k, v] : f.metadata) fmt::print("  meta {} = {}\n", k, v);
  for (const auto& [name, t] : f.tensors)
    fmt::print("  {:<32} {:<6} [{}]\n", name, dtype_name(t.scalar_type()), fmt::join(t.sizes(), ", "));
  if (!routing) return 0;
  for (const auto& layer : out["layers"]) {
    fmt::print("layer {}\n", layer["layer"].get<int64_t>());
    if (layer.contains("routing")) {
      const auto& r = layer["routing"];
      fmt::print("  routing: {} steps, {} tokens, {} slots; substituted {}, unfilled {}, dropped {}, rerouted {}, "
                 "trust-routed {}, explored {}\n",
                 r["steps"].get<int64_t>(), r["tokens"].get<int64_t>(), r["slots"].get<int64_t>(),
                 r["substituted"].get<int64_t>(), r["unfilled"].get<int64_t>(), r["dropped"].get<int64_t>(),
                 r["rerouted"].get<int64_t>(), r["trust_routed"].get<int64_t>(), r["explored"].get<int64_t>());
      fmt::print("  load per expert: [{}]\n", fmt::join(r["load"].get<std::vector<int64_t>>(), ", "));
    }
    if (layer.contains("contexts"))
      for (const auto& c : layer["contexts"]) {
        std::vector<std::string> items;
        for (const auto& e : c["top"])
          items.push_back(fmt::format("{} (trust {:.3f}, evidence {:.0f})", e["expert"].get<int64_t>(),
                                      e["trust"].get<float>(), e["evidence"].get<float>()));
        fmt::print("  context {}: {}\n", c["context"].get<int64_t>(), fmt::join(items, ", "));
      }
  }
  return 0;
}

}  // namespace trustep::cli

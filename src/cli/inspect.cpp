#include "cli/inspect.h"

#include "core/dtype.h"
#include "core/error.h"
#include "core/safetensors.h"
#include "train/checkpoint.h"
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
      ("checkpoint", po::value(&a.checkpoint), "describe a training checkpoint (root or step directory) instead")
      ("top", po::value(&a.top)->default_value(a.top), "experts listed per context")
      ("json", po::bool_switch(&a.json), "print JSON instead of text");
  positional.add("file", 1);
}

void validate(const InspectArgs& a) {
  TRUSTEP_CHECK_AS(OptionError, a.file.empty() != a.checkpoint.empty(),
                   "inspect: give either a FILE or --checkpoint DIR (trustep inspect FILE | --checkpoint DIR)");
  if (!a.file.empty())
    TRUSTEP_CHECK_AS(OptionError, std::filesystem::exists(a.file),
                     "invalid value '{}' for option '--file': no such file", a.file);
  else
    TRUSTEP_CHECK_AS(OptionError, std::filesystem::is_directory(a.checkpoint),
                     "invalid value '{}' for option '--checkpoint': no such directory", a.checkpoint);
  TRUSTEP_CHECK_AS(OptionError, a.top >= 1, "invalid value '{}' for option '--top': must be >= 1", a.top);
}

namespace {

int run_inspect_checkpoint(const InspectArgs& a) {
  const train::Checkpoint ck = train::Checkpoint::open(a.checkpoint);
  const SafetensorsFile routing = load_safetensors(ck.file("routing.safetensors"));
  const nlohmann::json& meta = ck.meta();
  nlohmann::json out{{"checkpoint", ck.dir()}, {"step", ck.step()}, {"world_size", ck.world_size()}, {"meta", meta}};
  out["layers"] = describe_routing(routing, a.top);
  const nlohmann::json totals = meta.value("routing", nlohmann::json::array());
  for (size_t l = 0; l < out["layers"].size() && l < totals.size(); ++l) out["layers"][l]["totals"] = totals[l];
  if (a.json) {
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  const auto& model = meta.at("model");
  fmt::print("checkpoint {}: step {}, loss {:.4f}, written by {} ranks\n", ck.dir(), ck.step(),
             meta.value("loss", 0.0), ck.world_size());
  fmt::print("  model: {}\n", model.dump());
  if (meta.contains("train")) fmt::print("  train: {}\n", meta.at("train").dump());
  const auto names = meta.contains("train") ? meta["train"].value("context_names", std::vector<std::string>())
                                            : std::vector<std::string>();
  const at::Tensor trust = routing.tensors.at("trust.value");        // [L, C, E]
  const at::Tensor evidence = routing.tensors.at("trust.evidence");  // [L, C, E]
  for (int64_t l = 0; l < trust.size(0); ++l) {
    fmt::print("layer {}\n", l);
    if (static_cast<size_t>(l) < totals.size()) {
      const auto& t = totals[l];
      fmt::print("  load per expert (slots, all steps, all ranks): [{}]\n",
                 fmt::join(t.at("load").get<std::vector<int64_t>>(), ", "));
      fmt::print("  substituted {}, unfilled {}, dropped {}, rerouted {}, trust-routed {}, explored {}\n",
                 t.at("substituted").get<int64_t>(), t.at("unfilled").get<int64_t>(), t.at("dropped").get<int64_t>(),
                 t.at("rerouted").get<int64_t>(), t.at("trust_routed").get<int64_t>(),
                 t.at("explored").get<int64_t>());
    }
    fmt::print("  trust (rows: contexts, columns: experts; evidence total {:.0f})\n",
               evidence[l].sum().item<double>());
    for (int64_t c = 0; c < trust.size(1); ++c) {
      std::vector<std::string> cells;
      for (int64_t e = 0; e < trust.size(2); ++e) cells.push_back(fmt::format("{:.2f}", trust[l][c][e].item<float>()));
      const std::string name = static_cast<size_t>(c) < names.size() ? names[c] : std::to_string(c);
      fmt::print("    {:<10} {}\n", name, fmt::join(cells, " "));
    }
  }
  return 0;
}

}  // namespace

int run_inspect(const InspectArgs& a) {
  if (!a.checkpoint.empty()) return run_inspect_checkpoint(a);
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

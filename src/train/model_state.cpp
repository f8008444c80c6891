#include "train/model_state.h"

#include "core/error.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

namespace trustep::train {
namespace {

constexpr const char* kBankMarker = ".experts.";

const AdamWSlot& slot_of(const AdamW& optimizer, size_t index, const std::string& name) {
  TRUSTEP_CHECK(index < optimizer.slots().size() && optimizer.slots()[index].name == name,
                "checkpoint: optimizer slot {} is not parameter '{}'", index, name);
  return optimizer.slots()[index];
}

void add_state(TensorMap& out, const std::string& name, const AdamWSlot& s, const at::Tensor& param,
               const at::Tensor& m, const at::Tensor& v, const at::Tensor& master) {
  out["model." + name] = param.detach().clone();
  out["optim." + name + ".m"] = m.clone();
  out["optim." + name + ".v"] = v.clone();
  if (!s.master.is_same(s.param)) out["optim." + name + ".master"] = master.clone();
}

const at::Tensor& need(const TensorMap& map, const std::string& name, const std::string& where) {
  auto it = map.find(name);
  TRUSTEP_CHECK(it != map.end(), "checkpoint {}: tensor '{}' is missing", where, name);
  return it->second;
}

void copy_checked(at::Tensor& dst, const at::Tensor& src, const std::string& name, const std::string& where) {
  TRUSTEP_CHECK(src.sizes() == dst.sizes(), "checkpoint {}: tensor '{}' has shape [{}], the model needs [{}]", where, name,
                fmt::join(src.sizes(), ", "), fmt::join(dst.sizes(), ", "));
  dst.copy_(src);
}

}  // namespace

std::string global_expert_name(const std::string& bank_name, int64_t expert) {
  const auto pos = bank_name.rfind(kBankMarker) + std::string(kBankMarker).size();
  return bank_name.substr(0, pos) + std::to_string(expert) + "." + bank_name.substr(pos);
}

ModelParameters::ModelParameters(torch::nn::Module& model, int rank) {
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    NamedParameter p{item.key(), item.value(), item.value().dim() >= 2, 0};
    if (model::is_expert_parameter(p.name)) {
      const int64_t local = p.tensor.size(0);
      p.first_expert = static_cast<int64_t>(rank) * local;
      experts.push_back(std::move(p));
    } else {
      replicated.push_back(std::move(p));
    }
  }
}

TensorMap ModelParameters::replicated_state(const AdamW& optimizer) const {
  TensorMap out;
  for (size_t i = 0; i < replicated.size(); ++i) {
    const auto& s = slot_of(optimizer, i, replicated[i].name);
    add_state(out, replicated[i].name, s, s.param, s.m, s.v, s.master);
  }
  out["optim.steps"] = at::tensor({optimizer.steps()}, at::kLong);
  return out;
}

TensorMap ModelParameters::sharded_state(const AdamW& optimizer) const {
  TensorMap out;
  for (size_t i = 0; i < experts.size(); ++i) {
    const auto& p = experts[i];
    const auto& s = slot_of(optimizer, replicated.size() + i, p.name);
    for (int64_t j = 0; j < p.tensor.size(0); ++j)
      add_state(out, global_expert_name(p.name, p.first_expert + j), s, s.param[j], s.m[j], s.v[j], s.master[j]);
  }
  return out;
}

void ModelParameters::load(const Checkpoint& ck, AdamW* optimizer) {
  c10::NoGradGuard no_grad;
  const std::string where = ck.dir();
  // One parameter's tensors: the value, and with an optimizer its moments and fp32 master.
  auto restore = [&](const TensorMap& map, const std::string& name, at::Tensor param, AdamWSlot* slot, int64_t row) {
    copy_checked(param, need(map, "model." + name, where), "model." + name, where);
    if (!slot) return;
    auto part = [row](const at::Tensor& t) { return row < 0 ? t : t[row]; };
    at::Tensor m = part(slot->m), v = part(slot->v);
    copy_checked(m, need(map, "optim." + name + ".m", where), "optim." + name + ".m", where);
    copy_checked(v, need(map, "optim." + name + ".v", where), "optim." + name + ".v", where);
    if (!slot->master.is_same(slot->param)) {
      at::Tensor master = part(slot->master);
      copy_checked(master, need(map, "optim." + name + ".master", where), "optim." + name + ".master", where);
    }
  };
  auto slot = [&](size_t i, const std::string& name) -> AdamWSlot* {
    if (!optimizer) return nullptr;
    slot_of(*optimizer, i, name);
    return &optimizer->slots()[i];
  };

  const TensorMap rep = ck.load_replicated();
  for (size_t i = 0; i < replicated.size(); ++i)
    restore(rep, replicated[i].name, replicated[i].tensor, slot(i, replicated[i].name), -1);

  std::vector<std::string> names;
  for (const auto& p : experts)
    for (int64_t j = 0; j < p.tensor.size(0); ++j) {
      const std::string g = global_expert_name(p.name, p.first_expert + j);
      names.push_back("model." + g);
      if (!optimizer) continue;
      names.push_back("optim." + g + ".m");
      names.push_back("optim." + g + ".v");
      if (p.tensor.scalar_type() != at::kFloat) names.push_back("optim." + g + ".master");
    }
  const TensorMap shard = ck.load_sharded(names);
  for (size_t i = 0; i < experts.size(); ++i) {
    const auto& p = experts[i];
    AdamWSlot* s = slot(replicated.size() + i, p.name);
    for (int64_t j = 0; j < p.tensor.size(0); ++j)
      restore(shard, global_expert_name(p.name, p.first_expert + j), p.tensor[j], s, j);
  }
}

void check_same_model(const Checkpoint& ck, const model::ModelConfig& config, const std::string& path) {
  const nlohmann::json saved = ck.meta().at("model");
  const nlohmann::json now = config.to_json();
  for (const char* key : {"vocab", "hidden", "layers", "heads", "kv_heads", "ffn", "experts", "top_k", "dtype"}) {
    TRUSTEP_CHECK_AS(OptionError, saved.contains(key) && now.contains(key) && saved.at(key) == now.at(key),
                     "checkpoint '{}' holds a different model: {} is {} there, {} here", path, key,
                     saved.contains(key) ? saved.at(key).dump() : "missing", now.contains(key) ? now.at(key).dump() : "missing");
  }
}

}  // namespace trustep::train

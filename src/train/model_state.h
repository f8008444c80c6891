// The model's parameters seen by the trainer and the checkpoint: replicated ones (data
// parallel, identical on every rank) and expert banks (sharded), the latter addressed per
// GLOBAL expert so a checkpoint written by W ranks loads on any world size.
#pragma once

#include "core/safetensors.h"
#include "model/transformer.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"

#include <string>
#include <vector>

namespace trustep::train {

struct NamedParameter {
  std::string name;  // the module path, e.g. "layers.0.attn.q_proj.weight" or "layers.0.moe.experts.gate"
  at::Tensor tensor;
  bool decay = true;  // norms' gains are not decayed
  // Expert banks only: [local, ...] rows belong to global experts first_expert + i.
  int64_t first_expert = 0;
};

class ModelParameters {
 public:
  ModelParameters() = default;
  // rank: expert banks hold global experts rank·local ... rank·local + local − 1.
  ModelParameters(torch::nn::Module& model, int rank);

  std::vector<NamedParameter> replicated;
  std::vector<NamedParameter> experts;

  // Checkpoint tensors: "model.{name}" (as held) and "optim.{name}.{m,v,master}" (fp32; master
  // only for non-fp32 parameters), replicated ones first; expert banks split into one tensor
  // per global expert: "model.layers.0.moe.experts.17.gate". Slot order: replicated, experts.
  TensorMap replicated_state(const AdamW& optimizer) const;
  TensorMap sharded_state(const AdamW& optimizer) const;
  // Copies every tensor this rank needs from `ck` into the parameters and, when given, the
  // optimizer (experts re-sharded from whatever world size wrote them). Errors name the tensor.
  void load(const Checkpoint& ck, AdamW* optimizer);
};

// "layers.0.moe.experts.gate" + 17 -> "layers.0.moe.experts.17.gate".
std::string global_expert_name(const std::string& bank_name, int64_t expert);

// OptionError naming the checkpoint and the first differing model setting when the
// checkpoint's model config (meta "model") differs from `config` in anything but the
// selector and runtime fields.
void check_same_model(const Checkpoint& ck, const model::ModelConfig& config, const std::string& path);

}  // namespace trustep::train

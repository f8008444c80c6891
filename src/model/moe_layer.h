// trustep::MoELayer: router → selector → dispatch → local SwiGLU experts → combine. A
// torch::nn::Module for LibTorch models; experts are sharded over the communicator's ranks,
// everything else is replicated (data parallel).
#pragma once

#include "comm/communicator.h"
#include "dispatch/dispatcher.h"
#include "experts/expert_bank.h"
#include "routing/router.h"
#include "routing/selector.h"

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <memory>

namespace trustep::model {

struct MoELayerConfig {
  int64_t hidden = 0;                                    // H
  int64_t ffn = 0;                                       // F per expert
  int64_t experts = 8;                                   // E (global), a multiple of the world size
  int64_t top_k = 2;                                     // k
  c10::ScalarType dtype = c10::ScalarType::Float;        // hidden states and expert compute
  c10::ScalarType comm_dtype = c10::ScalarType::Float;   // rows on the wire
  c10::ScalarType router_dtype = c10::ScalarType::Float; // router weight
  routing::SelectorConfig selector;                      // mode, alpha, capacity...; experts/top_k set from above
  int layer = 0;
  uint64_t seed = 0;  // router and expert initialisation: identical whatever the world size
  bool check_finite = false;
};

struct MoEOutput {
  at::Tensor hidden;        // same shape and dtype as the input
  at::Tensor z_loss;        // [] fp32
  at::Tensor balance_loss;  // [] fp32 load-balancing loss
  routing::Selection selection;
};

class MoELayerImpl : public torch::nn::Module {
 public:
  MoELayerImpl(const MoELayerConfig& config, comm::Communicator& comm);
  // x [T, H] or [B, S, H]. `trust` optionally carries the per-token trust inputs of blend and
  // trust-first (SelectorInputs::trust [T, E], trusted [T]); probs are filled in here.
  MoEOutput forward(const at::Tensor& x, const routing::SelectorInputs& trust = {});
  const MoELayerConfig& config() const { return config_; }
  // Hugging Face layout (Mixtral / Qwen3-MoE): router "{prefix}gate.weight" [E, H] and this
  // rank's experts "{prefix}experts.{e}.{gate,up,down}_proj.weight"; nothing else is read.
  // prefix is e.g. "model.layers.3.mlp.".
  void load_hf(const std::string& path, const std::string& prefix);

  std::shared_ptr<routing::RouterImpl> router;
  std::shared_ptr<experts::ExpertBankImpl> experts;

 private:
  MoELayerConfig config_;
  routing::Selector selector_;
  dispatch::Dispatcher dispatcher_;
};

}  // namespace trustep::model

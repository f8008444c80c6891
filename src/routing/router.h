// The router (gate): linear H → E. Runs in its weight dtype (bf16 or fp32), upcasts the logits
// once to fp32 (contract router.logits), and provides the aux losses the trainer adds.
#pragma once

#include "core/contract.h"

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <cstdint>

namespace trustep::routing {

struct RouterConfig {
  int64_t hidden = 0;                          // H
  int64_t experts = 0;                         // E
  c10::ScalarType dtype = c10::ScalarType::Float;  // weight dtype: fp32 or bf16
  bool check_finite = false;                   // NaN/Inf logits → error naming layer and rank (syncs)
  int layer = 0;                               // for messages
  int rank = 0;                                // for messages
  uint64_t seed = 0;                           // weight initialisation (same on every rank)
  void validate() const;                       // OptionError naming --hidden / --experts / --router-dtype
};

struct RouterOutput {
  at::Tensor logits;  // [T, E] fp32
  at::Tensor probs;   // [T, E] fp32 softmax(logits)
  at::Tensor z_loss;  // [] fp32: mean over tokens of logsumexp(logits)^2
};

class RouterImpl : public torch::nn::Module {
 public:
  explicit RouterImpl(const RouterConfig& config);
  // hidden [T, H] (any float dtype; cast to the router dtype for the matmul).
  RouterOutput forward(const at::Tensor& hidden);
  const RouterConfig& config() const { return config_; }

  at::Tensor weight;  // [E, H] parameter in config.dtype
  // [E] fp32 buffer: aux-loss-free balancing bias (DeepSeek-V3), added to selection scores only.
  at::Tensor bias;

 private:
  RouterConfig config_;
};

// Switch-Transformer load-balancing loss: E · Σ_e f_e · P_e, with f_e the fraction of used
// slots routed to e (no gradient) and P_e the mean router probability of e (gradient).
// probs [T, E] fp32, experts [T, k] int64 (-1 unused). 0 for T = 0.
at::Tensor load_balancing_loss(const at::Tensor& probs, const at::Tensor& experts);

// Aux-loss-free balancing step: bias_e += rate · sign(mean(load) − load_e), with `load` [E]
// the loads summed over every rank (so the bias stays identical everywhere).
void update_balance_bias(at::Tensor& bias, const at::Tensor& global_load, double rate);

}  // namespace trustep::routing

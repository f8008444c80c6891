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
#include <c10/core/Device.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <string>
#include <vector>

namespace trustep::model {

// What a poisoned expert returns: noise of the real output's scale (a bad expert), or NaN (a
// numerical fault, what --check-finite is for).
enum class PoisonKind { kNoise, kNaN };
PoisonKind parse_poison_kind(const std::string& name, const std::string& option);
const char* poison_kind_name(PoisonKind kind);

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
  bool check_finite = false;  // NaN/Inf router logits → the same error on every rank (syncs)
  // Where the selector draws its exploration noise: the tokens' device. The modules are built
  // on the CPU; move them with ->to(device).
  c10::Device device = c10::Device(c10::kCPU);
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

  // Fault injection. While active, the expert-bank output rows of every listed global expert
  // that this rank holds are replaced, before combine, by N(0, 1) · std(real rows of that
  // expert) noise: detached constants, so the poisoned experts' weights get no gradient from
  // them while x (other experts) and the gate weights still do. The noise generator is seeded by
  // (seed, layer, call counter); set_poison resets the counter to 0 and each forward adds 1, so
  // calling set_poison(experts, seed ^ step) every step reproduces the noise after a resume.
  // Experts outside [0, E) → OptionError naming '--poison-experts'.
  void set_poison(std::vector<int64_t> global_experts, uint64_t seed, PoisonKind kind = PoisonKind::kNoise);
  void clear_poison();
  // Restarts the selector's exploration RNG (trust-first ε) at `seed` (see Selector::reseed).
  void reseed_selector(uint64_t seed) { selector_.reseed(seed); }
  void set_call_counter(uint64_t counter) { poison_calls_ = counter; }
  bool poisoned() const { return !poison_.empty(); }
  const std::vector<int64_t>& poisoned_experts() const { return poison_; }

  std::shared_ptr<routing::RouterImpl> router;
  std::shared_ptr<experts::ExpertBankImpl> experts;

 private:
  MoELayerConfig config_;
  routing::Selector selector_;
  dispatch::Dispatcher dispatcher_;
  std::vector<int64_t> poison_;  // sorted global expert ids (empty: off)
  uint64_t poison_seed_ = 0;
  PoisonKind poison_kind_ = PoisonKind::kNoise;
  uint64_t poison_calls_ = 0;

  at::Tensor apply_poison(const at::Tensor& y, const std::vector<int64_t>& local_counts);
};

TORCH_MODULE(MoELayer);

}  // namespace trustep::model

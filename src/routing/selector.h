// Per-token expert selection: every token is routed independently, on the tokens' device, in
// tensor space (no host copies, no lists). The exact rules (scores, ties, substitution,
// capacity) are in docs/routing.md; tests check them against plain loops.
#pragma once

#include "core/contract.h"

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <string>

namespace trustep::routing {

enum class SelectorMode : int64_t { kRouter = 0, kBlend = 1, kTrustFirst = 2 };
enum class OverflowPolicy : int64_t { kDropless = 0, kDrop = 1, kReroute = 2 };
SelectorMode parse_mode(const std::string& name, const std::string& option);
OverflowPolicy parse_overflow(const std::string& name, const std::string& option);
const char* mode_name(SelectorMode mode);
const char* overflow_name(OverflowPolicy policy);

struct SelectorConfig {
  SelectorMode mode = SelectorMode::kRouter;
  int64_t experts = 8;                  // E
  int64_t top_k = 2;                    // k distinct experts per token, 1 <= k <= E
  double alpha = 0.5;                   // blend: score = alpha·p + (1 − alpha)·trust, alpha in [0, 1]
  double epsilon = 0.0;                 // trust-first: probability that a token explores (router scores)
  OverflowPolicy overflow = OverflowPolicy::kDropless;
  double capacity_factor = 1.25;        // drop/reroute: capacity = ceil(factor · T · k / E) slots per expert
  double substitute_min_trust = 0.0;    // a substitute needs effective trust >= this
  uint64_t seed = 0;                    // exploration RNG
  // Throws OptionError naming the CLI option (--top-k, --alpha, ...) of the first bad field.
  void validate() const;
};

// One layer's inputs, all on the tokens' device.
struct SelectorInputs {
  at::Tensor probs;        // [T, E] fp32 router probabilities; weights keep its autograd graph
  at::Tensor trust;        // [T, E] fp32 effective trust of each token's context (blend, trust-first)
  at::Tensor trusted;      // [T] bool: the token's context has >= k evidenced experts (trust-first)
  at::Tensor bias;         // [E] fp32 selection-only bias (aux-loss-free balancing); optional
  at::Tensor available;    // [E] bool; optional (all available)
  at::Tensor cluster;      // [E] int64 cluster of each expert; optional (substitutes from any cluster)
};

// Counters of one selection, as device tensors (reading them syncs; nothing here does).
struct SelectionCounts {
  at::Tensor load;          // [E] int64 slots finally assigned to each expert
  at::Tensor substituted;   // [] int64 slots whose expert was unavailable and got a substitute
  at::Tensor unfilled;      // [] int64 slots whose expert was unavailable and had no substitute
  at::Tensor dropped;       // [] int64 slots dropped by capacity
  at::Tensor rerouted;      // [] int64 slots that overflowed and found room at another expert
  at::Tensor trust_routed;  // [] int64 tokens routed by trust (trust-first)
  at::Tensor explored;      // [] int64 trust-first tokens that explored with router scores
};

struct Selection {
  at::Tensor experts;  // [T, k] int64, distinct per token; -1: slot unused (no substitute, or dropped)
  at::Tensor scores;   // [T, k] fp32 selection score of each slot's expert (0 for unused)
  at::Tensor weights;  // [T, k] fp32 (contract selector.weights): probs renormalised over the token's
                       // used slots, 0 for unused; differentiable w.r.t. SelectorInputs::probs
  SelectionCounts counts;
};

// Which implementation picks the experts. kAuto: the fused kernel of the tokens' device (CPU;
// CUDA when built with it and k <= 32, E <= 4096), else the torch-op path. All pick identically.
enum class SelectorImpl { kAuto, kTorchOps, kFused };

class Selector {
 public:
  Selector(const SelectorConfig& config, c10::Device device);
  const SelectorConfig& config() const { return config_; }
  // Restarts the exploration RNG at `seed`; a trainer calls it every step (seed from the step)
  // so that a resumed run explores exactly as an uninterrupted one.
  void reseed(uint64_t seed) { generator_.set_current_seed(seed); }
  Selection select(const SelectorInputs& in, SelectorImpl impl = SelectorImpl::kAuto);

 private:
  std::pair<at::Tensor, at::Tensor> pick(const at::Tensor& scores, const SelectorInputs& in, SelectorImpl impl) const;

  SelectorConfig config_;
  at::Generator generator_;  // on the tokens' device, seeded: exploration is reproducible
};

// --- building blocks, exposed for tests and benchmarks -------------------------------------

// [T, E] fp32 selection scores for the mode (before availability). `explore` [T] bool.
at::Tensor selection_scores(const SelectorConfig& config, const SelectorInputs& in, const at::Tensor& explore);
// Ideal top-k with ties to the lower expert index, then substitution of unavailable experts.
// Returns experts [T, k] (-1 = unfilled) and whether each slot was substituted [T, k] bool.
std::pair<at::Tensor, at::Tensor> pick_experts_torch(const SelectorConfig& config, const at::Tensor& scores,
                                                     const SelectorInputs& in);
// The fused CPU kernel computes each token's scores itself (no [T, E] temporaries) and returns
// experts [T, k], substituted [T, k] and the slots' scores [T, k].
std::tuple<at::Tensor, at::Tensor, at::Tensor> pick_experts_fused(const SelectorConfig& config,
                                                                 const SelectorInputs& in, const at::Tensor& explore);
// Applies the overflow policy in place on experts [T, k] and their slot_scores [T, k]; `scores`
// [T, E] is needed for reroute only. Returns (dropped, rerouted) [T, k] bool.
std::pair<at::Tensor, at::Tensor> apply_capacity(const SelectorConfig& config, const at::Tensor& scores,
                                                 const SelectorInputs& in, at::Tensor& experts,
                                                 at::Tensor& slot_scores);
#ifdef TRUSTEP_HAVE_CUDA
// The CUDA kernel (src/cuda/select_kernel.cu); supports k <= 32 and E <= 4096.
std::pair<at::Tensor, at::Tensor> pick_experts_cuda(const SelectorConfig& config, const at::Tensor& scores,
                                                    const SelectorInputs& in);
bool fused_cuda_supports(const SelectorConfig& config);
#endif
int64_t expert_capacity(const SelectorConfig& config, int64_t tokens);
// probs [T, E] → weights [T, k]: probs at the used slots renormalised per token (autograd-aware);
// for k = 1 the probability itself (renormalising would leave the router without gradient).
at::Tensor gate_weights(const at::Tensor& probs, const at::Tensor& experts);

}  // namespace trustep::routing

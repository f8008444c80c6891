#include "routing/selector.h"

#include "core/error.h"

#include <fmt/ranges.h>

#include <ATen/TensorOperators.h>
#include <ATen/core/DistributionsHelper.h>
#include <ATen/Context.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/argmax.h>
#include <ATen/ops/full.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <cmath>
#include <limits>

namespace trustep::routing {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

void check_tensor(const at::Tensor& t, const char* name, at::ScalarType dtype, std::vector<int64_t> shape) {
  TRUSTEP_CHECK(t.defined(), "selector: {} is required", name);
  TRUSTEP_CHECK(t.scalar_type() == dtype, "selector: {} must be {}, got {}", name, c10::toString(dtype),
                c10::toString(t.scalar_type()));
  TRUSTEP_CHECK(t.sizes() == c10::IntArrayRef(shape), "selector: {} must have shape [{}], got [{}]", name,
                fmt::join(shape, ", "), fmt::join(t.sizes(), ", "));
}

// Stable descending order of scores: ties keep the lower expert index first.
at::Tensor order_desc(const at::Tensor& scores) {
  return std::get<1>(at::sort(scores, /*stable=*/true, /*dim=*/-1, /*descending=*/true));
}

// [T, E] bool: experts currently used by each token's slots (experts [T, k], -1 ignored).
at::Tensor used_mask(const at::Tensor& experts, int64_t num_experts) {
  const auto T = experts.size(0);
  at::Tensor used = at::zeros({T, num_experts + 1}, experts.options().dtype(at::kBool));
  used.scatter_(1, at::where(experts >= 0, experts, num_experts), true);
  return used.narrow(1, 0, num_experts);
}

// For flat slots with expert ids `e` (E = none) and priority `score`, each slot's rank among the
// slots of the same expert, by score descending then flat index ascending.
at::Tensor rank_within_expert(const at::Tensor& e, const at::Tensor& score, int64_t num_experts) {
  const int64_t n = e.size(0);
  const at::Tensor by_score = std::get<1>(at::sort(score, /*stable=*/true, 0, /*descending=*/true));
  const at::Tensor by_expert = std::get<1>(at::sort(e.index_select(0, by_score), /*stable=*/true, 0, false));
  const at::Tensor order = by_score.index_select(0, by_expert);  // slots grouped by expert, best first
  const at::Tensor sorted_e = e.index_select(0, order);
  at::Tensor counts = at::zeros({num_experts + 1}, e.options());
  counts.scatter_add_(0, sorted_e, at::ones_like(sorted_e));
  const at::Tensor starts = counts.cumsum(0) - counts;
  const at::Tensor rank_sorted = at::arange(n, e.options()) - starts.index_select(0, sorted_e);
  at::Tensor rank = at::empty_like(rank_sorted);
  rank.index_put_({order}, rank_sorted);
  return rank;
}

}  // namespace

SelectorMode parse_mode(const std::string& name, const std::string& option) {
  if (name == "router") return SelectorMode::kRouter;
  if (name == "blend") return SelectorMode::kBlend;
  if (name == "trust-first") return SelectorMode::kTrustFirst;
  throw OptionError(fmt::format("invalid value '{}' for option '{}': expected router, blend or trust-first", name,
                                option),
                    TRUSTEP_ORIGIN);
}

OverflowPolicy parse_overflow(const std::string& name, const std::string& option) {
  if (name == "dropless") return OverflowPolicy::kDropless;
  if (name == "drop") return OverflowPolicy::kDrop;
  if (name == "reroute") return OverflowPolicy::kReroute;
  throw OptionError(
      fmt::format("invalid value '{}' for option '{}': expected dropless, drop or reroute", name, option),
      TRUSTEP_ORIGIN);
}

const char* mode_name(SelectorMode mode) {
  switch (mode) {
    case SelectorMode::kBlend: return "blend";
    case SelectorMode::kTrustFirst: return "trust-first";
    default: return "router";
  }
}

const char* overflow_name(OverflowPolicy policy) {
  switch (policy) {
    case OverflowPolicy::kDrop: return "drop";
    case OverflowPolicy::kReroute: return "reroute";
    default: return "dropless";
  }
}

void SelectorConfig::validate() const {
  auto fail = [](const std::string& option, const std::string& value, const std::string& why) {
    throw OptionError(fmt::format("invalid value '{}' for option '{}': {}", value, option, why), TRUSTEP_ORIGIN);
  };
  if (experts < 1) fail("--experts", std::to_string(experts), "must be >= 1");
  if (top_k < 1 || top_k > experts)
    fail("--top-k", std::to_string(top_k), fmt::format("must be in [1, {}] (the number of experts)", experts));
  if (!(alpha >= 0 && alpha <= 1)) fail("--alpha", fmt::format("{}", alpha), "must be in [0, 1]");
  if (!(epsilon >= 0 && epsilon <= 1)) fail("--epsilon", fmt::format("{}", epsilon), "must be in [0, 1]");
  if (!(capacity_factor > 0) || !std::isfinite(capacity_factor))
    fail("--capacity-factor", fmt::format("{}", capacity_factor), "must be > 0");
  if (!(substitute_min_trust >= 0 && substitute_min_trust <= 1))
    fail("--substitute-min-trust", fmt::format("{}", substitute_min_trust), "must be in [0, 1]");
}

int64_t expert_capacity(const SelectorConfig& config, int64_t tokens) {
  return static_cast<int64_t>(
      std::ceil(config.capacity_factor * static_cast<double>(tokens * config.top_k) / config.experts));
}

at::Tensor selection_scores(const SelectorConfig& config, const SelectorInputs& in, const at::Tensor& explore) {
  at::Tensor router = in.bias.defined() ? in.probs.detach() + in.bias : in.probs.detach();
  switch (config.mode) {
    case SelectorMode::kRouter:
      return router;
    case SelectorMode::kBlend:
      return router * config.alpha + in.trust * (1.0 - config.alpha);
    case SelectorMode::kTrustFirst: {
      const at::Tensor by_trust = in.trusted & ~explore;  // [T]
      return at::where(by_trust.unsqueeze(1), in.trust, router);
    }
  }
  return router;
}

std::pair<at::Tensor, at::Tensor> pick_experts_torch(const SelectorConfig& config, const at::Tensor& scores,
                                                     const SelectorInputs& in) {
  const int64_t k = config.top_k;
  const at::Tensor ideal = order_desc(scores).narrow(1, 0, k).contiguous();  // [T, k]
  at::Tensor substituted = at::zeros(ideal.sizes(), ideal.options().dtype(at::kBool));
  if (!in.available.defined()) return {ideal, substituted};

  const at::Tensor avail_slot = in.available.index_select(0, ideal.flatten()).view(ideal.sizes());  // [T, k]
  // Available ideal picks stay; they and chosen substitutes are never offered again (no duplicates).
  at::Tensor taken = at::zeros_like(scores, scores.options().dtype(at::kBool));
  taken.scatter_(1, ideal, avail_slot);
  at::Tensor eligible_base = in.available.unsqueeze(0).expand_as(taken);
  if (config.substitute_min_trust > 0) eligible_base = eligible_base & (in.trust >= config.substitute_min_trust);

  at::Tensor experts = ideal.clone();
  for (int64_t j = 0; j < k; ++j) {
    const at::Tensor need = ~avail_slot.select(1, j);  // [T]
    at::Tensor candidates = eligible_base & ~taken;    // [T, E]
    if (in.cluster.defined()) {
      const at::Tensor wanted_cluster = in.cluster.index_select(0, ideal.select(1, j));  // [T]
      candidates = candidates & (in.cluster.unsqueeze(0) == wanted_cluster.unsqueeze(1));
    }
    const at::Tensor best = scores.masked_fill(~candidates, kNegInf).argmax(1);  // first max: lowest index
    const at::Tensor found = need & candidates.any(1);
    experts.select(1, j).copy_(at::where(need, at::where(found, best, -1), ideal.select(1, j)));
    substituted.select(1, j).copy_(found);
    taken.scatter_(1, best.unsqueeze(1), found.unsqueeze(1) | taken.gather(1, best.unsqueeze(1)));
  }
  return {experts, substituted};
}

std::pair<at::Tensor, at::Tensor> apply_capacity(const SelectorConfig& config, const at::Tensor& scores,
                                                 const SelectorInputs& in, at::Tensor& experts,
                                                 at::Tensor& slot_scores) {
  const int64_t T = experts.size(0), k = config.top_k, E = config.experts;
  at::Tensor dropped = at::zeros(experts.sizes(), experts.options().dtype(at::kBool));
  at::Tensor rerouted = at::zeros_like(dropped);
  if (config.overflow == OverflowPolicy::kDropless || T == 0) return {dropped, rerouted};
  const int64_t capacity = expert_capacity(config, T);

  at::Tensor cur = experts.flatten().clone();  // [N] current expert of each slot, -1 none
  const at::Tensor valid = cur >= 0;
  TRUSTEP_CHECK(config.overflow != OverflowPolicy::kReroute || scores.defined(),
                "apply_capacity: reroute needs the [T, E] scores");
  auto score_at = [&](const at::Tensor& e) {  // [N] score of each slot at expert e (-inf for none)
    return at::where(e >= 0, scores.gather(1, e.view({T, k}).clamp_min(0)).flatten(), kNegInf);
  };

  if (config.overflow == OverflowPolicy::kDrop) {
    const at::Tensor rank = rank_within_expert(at::where(valid, cur, E), slot_scores.flatten(), E);
    const at::Tensor drop = valid & (rank >= capacity);
    dropped.copy_(drop.view({T, k}));
    experts.masked_fill_(dropped, -1);
    return {dropped, rerouted};
  }

  // kReroute: rounds of "each expert accepts its best arrivals up to its room; the rest move to
  // their token's best available expert that still has room and that the token does not use".
  const at::Tensor token_order = order_desc(scores);           // [T, E]
  const at::Tensor slot_pos = at::arange(T * k, cur.options()) % k;
  const at::Tensor slot_token = at::arange(T * k, cur.options()).div(k, "floor");
  at::Tensor kept = at::zeros_like(valid);
  at::Tensor pending = valid.clone();
  at::Tensor moved = at::zeros_like(valid);
  const at::Tensor avail = in.available.defined() ? in.available : at::ones({E}, valid.options());
  for (int64_t round = 0; round <= E && pending.any().item<bool>(); ++round) {
    at::Tensor kept_load = at::zeros({E + 1}, cur.options());
    kept_load.scatter_add_(0, at::where(kept, cur, E), at::ones_like(cur));
    const at::Tensor room = capacity - kept_load.narrow(0, 0, E);  // [E]
    const at::Tensor rank = rank_within_expert(at::where(pending, cur, E), score_at(cur), E);
    const at::Tensor accept = pending & (rank < room.index_select(0, cur.clamp_min(0)));
    kept = kept | accept;
    const at::Tensor rejected = pending & ~accept;
    pending = at::zeros_like(pending);
    kept_load.zero_();
    kept_load.scatter_add_(0, at::where(kept, cur, E), at::ones_like(cur));
    const at::Tensor has_room = kept_load.narrow(0, 0, E) < capacity;  // [E] after this round's acceptances
    for (int64_t j = 0; j < k; ++j) {  // slot order: a token's slots never pick the same expert
      const at::Tensor r = (rejected & (slot_pos == j)).nonzero().squeeze(1);
      if (r.numel() == 0) continue;
      const at::Tensor tokens = slot_token.index_select(0, r);
      const at::Tensor used = used_mask(cur.view({T, k}), E).index_select(0, tokens);  // [R, E]
      const at::Tensor eligible = avail.unsqueeze(0) & has_room.unsqueeze(0) & ~used;
      const at::Tensor order = token_order.index_select(0, tokens);                     // [R, E]
      const at::Tensor in_order = eligible.gather(1, order);
      const at::Tensor first = in_order.to(at::kInt).argmax(1, /*keepdim=*/true);      // best eligible
      const at::Tensor found = in_order.any(1);
      cur.index_put_({r}, at::where(found, order.gather(1, first).squeeze(1), -1));
      pending.index_put_({r}, found);
      moved.index_put_({r}, found);
    }
  }
  const at::Tensor final_e = at::where(kept, cur, -1);
  experts.copy_(final_e.view({T, k}));
  slot_scores = scores.gather(1, experts.clamp_min(0));
  dropped.copy_((valid & ~kept).view({T, k}));
  rerouted.copy_((kept & moved).view({T, k}));
  return {dropped, rerouted};
}

at::Tensor gate_weights(const at::Tensor& probs, const at::Tensor& experts) {
  const at::Tensor used = experts >= 0;
  const at::Tensor picked = probs.gather(1, experts.clamp_min(0)) * used;  // [T, k], keeps autograd
  // k = 1: renormalising would make every weight 1 and cut the router off from the loss's
  // gradient, so the weight is the probability itself (Switch Transformer).
  if (experts.size(1) == 1) return picked;
  const at::Tensor total = picked.sum(1, /*keepdim=*/true);
  return picked / at::where(total > 0, total, at::ones_like(total));
}

Selector::Selector(const SelectorConfig& config, c10::Device device) : config_(config) {
  config_.validate();
  generator_ = at::globalContext().defaultGenerator(device).clone();
  generator_.set_current_seed(config.seed);
}

std::pair<at::Tensor, at::Tensor> Selector::pick(const at::Tensor& scores, const SelectorInputs& in,
                                                 SelectorImpl impl) const {
  if (impl == SelectorImpl::kTorchOps) return pick_experts_torch(config_, scores, in);
#ifdef TRUSTEP_HAVE_CUDA
  if (scores.is_cuda() && fused_cuda_supports(config_)) return pick_experts_cuda(config_, scores, in);
#endif
  TRUSTEP_CHECK(impl == SelectorImpl::kAuto, "selector: no fused kernel for {} tensors with k = {}, E = {}",
                scores.device().str(), config_.top_k, config_.experts);
  return pick_experts_torch(config_, scores, in);
}

Selection Selector::select(const SelectorInputs& in, SelectorImpl impl) {
  const int64_t E = config_.experts, k = config_.top_k;
  check_tensor(in.probs, "probs", at::kFloat, {in.probs.defined() ? in.probs.size(0) : 0, E});
  const int64_t T = in.probs.size(0);
  const bool needs_trust = config_.mode != SelectorMode::kRouter || config_.substitute_min_trust > 0;
  if (needs_trust) check_tensor(in.trust, "trust", at::kFloat, {T, E});
  if (config_.mode == SelectorMode::kTrustFirst) check_tensor(in.trusted, "trusted", at::kBool, {T});
  if (in.bias.defined()) check_tensor(in.bias, "bias", at::kFloat, {E});
  if (in.available.defined()) check_tensor(in.available, "available", at::kBool, {E});
  if (in.cluster.defined()) check_tensor(in.cluster, "cluster", at::kLong, {E});

  const auto opts = in.probs.options();
  at::Tensor explore = at::zeros({T}, opts.dtype(at::kBool));
  if (config_.mode == SelectorMode::kTrustFirst && config_.epsilon > 0)
    explore = at::rand({T}, generator_, opts) < config_.epsilon;
  // [T, E] scores exist only where needed: the torch-op and CUDA paths, and reroute.
  at::Tensor scores, experts, substituted, slot_scores;
  if (impl != SelectorImpl::kTorchOps && in.probs.is_cpu()) {
    std::tie(experts, substituted, slot_scores) = pick_experts_fused(config_, in, explore);
    if (config_.overflow == OverflowPolicy::kReroute) scores = selection_scores(config_, in, explore).contiguous();
  } else {
    scores = selection_scores(config_, in, explore).contiguous();
    std::tie(experts, substituted) = pick(scores, in, impl);
    slot_scores = scores.gather(1, experts.clamp_min(0));
  }
  const at::Tensor unfilled = experts < 0;
  auto [dropped, rerouted] = apply_capacity(config_, scores, in, experts, slot_scores);

  Selection s;
  s.experts = experts;
  const at::Tensor used = experts >= 0;
  s.scores = slot_scores * used;
  static const Contract kWeights{boundary::kSelectorWeights, c10::ScalarType::Float, std::nullopt, 2, true};
  s.weights = ContractChecker().enforce(kWeights, gate_weights(in.probs, experts));
  auto& c = s.counts;
  at::Tensor load = at::zeros({E + 1}, experts.options());
  load.scatter_add_(0, at::where(used, experts, E).flatten(), at::ones({T * k}, experts.options()));
  c.load = load.narrow(0, 0, E);
  c.substituted = substituted.sum();
  c.unfilled = unfilled.sum();
  c.dropped = dropped.sum();
  c.rerouted = rerouted.sum();
  if (config_.mode == SelectorMode::kTrustFirst) {
    c.trust_routed = (in.trusted & ~explore).sum();
    c.explored = (in.trusted & explore).sum();
  } else {
    c.trust_routed = c.explored = at::zeros({}, experts.options());
  }
  return s;
}

}  // namespace trustep::routing

#include "routing/router.h"

#include "core/dtype.h"
#include "core/error.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/where.h>
#include <fmt/ranges.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/logsumexp.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/sign.h>
#include <ATen/ops/zeros.h>

#include <cmath>

namespace trustep::routing {

void RouterConfig::validate() const {
  TRUSTEP_CHECK_AS(OptionError, hidden >= 1, "invalid value '{}' for option '--hidden': must be >= 1", hidden);
  TRUSTEP_CHECK_AS(OptionError, experts >= 1, "invalid value '{}' for option '--experts': must be >= 1", experts);
  TRUSTEP_CHECK_AS(OptionError, dtype == c10::ScalarType::Float || dtype == c10::ScalarType::BFloat16,
                   "invalid value '{}' for option '--router-dtype': expected fp32 or bf16", dtype_name(dtype));
}

RouterImpl::RouterImpl(const RouterConfig& config) : config_(config) {
  config_.validate();
  // Uniform(±1/√H) as nn.Linear, from a seeded CPU generator in fp32, then cast: the same
  // weights on every rank and for any dtype (data-parallel replicas start identical).
  const double bound = 1.0 / std::sqrt(static_cast<double>(config.hidden));
  at::Generator gen = at::detail::createCPUGenerator(config.seed);
  at::Tensor w = at::empty({config.experts, config.hidden}, at::kFloat).uniform_(-bound, bound, gen);
  weight = register_parameter("weight", w.to(config.dtype));
  bias = register_buffer("balance_bias", at::zeros({config.experts}, at::kFloat));
}

RouterOutput RouterImpl::forward(const at::Tensor& hidden) {
  TRUSTEP_CHECK(hidden.dim() == 2 && hidden.size(1) == config_.hidden,
                "router (layer {}, rank {}): hidden must be [T, {}], got [{}]", config_.layer, config_.rank,
                config_.hidden, fmt::join(hidden.sizes(), ", "));
  // The matmul runs in the router's dtype; the logits leave it once, on device, as fp32.
  at::Tensor logits = at::linear(hidden.to(weight.scalar_type()), weight).to(at::kFloat);
  static const Contract kLogits{boundary::kRouterLogits, c10::ScalarType::Float, std::nullopt, 2, true};
  logits = ContractChecker(ContractPolicy::kStrict, config_.rank).enforce(kLogits, logits, config_.layer);
  if (config_.check_finite && logits.numel() > 0 && !at::isfinite(logits).all().item<bool>())
    throw Error(fmt::format("router logits contain NaN or Inf (layer {}, rank {}): {} of {} tokens; the layer "
                            "input or the router weights are not finite (check the inputs and the learning rate)",
                            config_.layer, config_.rank,
                            at::isfinite(logits).all(1).logical_not().sum().item<int64_t>(), logits.size(0)),
                TRUSTEP_ORIGIN);
  RouterOutput out;
  out.probs = logits.softmax(-1);
  const at::Tensor lse = at::logsumexp(logits, {1});
  out.z_loss = logits.size(0) > 0 ? (lse * lse).mean() : at::zeros({}, logits.options());
  out.logits = std::move(logits);
  return out;
}

at::Tensor load_balancing_loss(const at::Tensor& probs, const at::Tensor& experts) {
  const int64_t T = probs.size(0), E = probs.size(1);
  if (T == 0) return at::zeros({}, probs.options());
  const at::Tensor used = experts >= 0;
  at::Tensor load = at::zeros({E + 1}, probs.options().dtype(at::kFloat).requires_grad(false));
  load.scatter_add_(0, at::where(used, experts, E).flatten(), at::ones({experts.numel()}, load.options()));
  const at::Tensor slots = used.sum().to(at::kFloat).clamp_min(1);
  const at::Tensor fraction = load.narrow(0, 0, E) / slots;  // f_e, no gradient
  const at::Tensor mean_prob = probs.mean(0);                // P_e
  return (fraction * mean_prob).sum() * static_cast<double>(E);
}

void update_balance_bias(at::Tensor& bias, const at::Tensor& global_load, double rate) {
  const at::Tensor load = global_load.to(at::kFloat);
  bias.add_(at::sign(load.mean() - load) * rate);
}

}  // namespace trustep::routing

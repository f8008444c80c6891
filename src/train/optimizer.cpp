#include "train/optimizer.h"

#include "core/error.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cmath>

namespace trustep::train {

void AdamWConfig::validate() const {
  TRUSTEP_CHECK_AS(OptionError, beta1 >= 0 && beta1 < 1, "invalid value '{}' for option '--beta1': must be in [0, 1)",
                   beta1);
  TRUSTEP_CHECK_AS(OptionError, beta2 >= 0 && beta2 < 1, "invalid value '{}' for option '--beta2': must be in [0, 1)",
                   beta2);
  TRUSTEP_CHECK_AS(OptionError, eps > 0, "invalid value '{}' for option '--adam-eps': must be > 0", eps);
  TRUSTEP_CHECK_AS(OptionError, weight_decay >= 0, "invalid value '{}' for option '--weight-decay': must be >= 0",
                   weight_decay);
}

AdamW::AdamW(const AdamWConfig& config) : config_(config) { config_.validate(); }

void AdamW::add(const std::string& name, const at::Tensor& param, bool decay) {
  c10::NoGradGuard no_grad;
  AdamWSlot slot;
  slot.name = name;
  slot.param = param;
  slot.master = param.scalar_type() == at::kFloat ? param : param.detach().to(at::kFloat).contiguous();
  slot.m = at::zeros_like(slot.master);
  slot.v = at::zeros_like(slot.master);
  slot.decay = decay;
  slots_.push_back(std::move(slot));
}

void AdamW::sync_param(AdamWSlot& slot) {
  c10::NoGradGuard no_grad;
  if (!slot.master.is_same(slot.param)) slot.param.copy_(slot.master);
}

void AdamW::step(double lr, double grad_scale) {
  c10::NoGradGuard no_grad;
  ++steps_;
  const double b1 = config_.beta1, b2 = config_.beta2;
  const double bias1 = 1 - std::pow(b1, static_cast<double>(steps_));
  const double bias2 = 1 - std::pow(b2, static_cast<double>(steps_));
  for (auto& s : slots_) {
    const at::Tensor grad = s.grad.defined() ? s.grad : s.param.grad();
    at::Tensor g = grad.defined() ? grad.to(at::kFloat) * grad_scale : at::zeros_like(s.master);
    s.m.mul_(b1).add_(g, 1 - b1);
    s.v.mul_(b2).addcmul_(g, g, 1 - b2);
    if (s.decay && config_.weight_decay > 0) s.master.mul_(1 - lr * config_.weight_decay);
    const at::Tensor denom = (s.v / bias2).sqrt_().add_(config_.eps);
    s.master.addcdiv_(s.m, denom, -lr / bias1);
    sync_param(s);
    s.grad = at::Tensor();
  }
}

double warmup_cosine_lr(int64_t step, int64_t warmup, int64_t total, double peak, double min_lr) {
  if (warmup > 0 && step < warmup) return peak * static_cast<double>(step + 1) / static_cast<double>(warmup);
  const int64_t span = std::max<int64_t>(1, total - warmup);
  const double progress = std::min(1.0, static_cast<double>(step - warmup) / static_cast<double>(span));
  return min_lr + 0.5 * (peak - min_lr) * (1 + std::cos(M_PI * progress));
}

}  // namespace trustep::train

#include "experts/expert_bank.h"

#include "core/contract.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/safetensors.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/silu.h>
#include <fmt/ranges.h>

#include <cmath>
#include <numeric>
#include <unordered_set>

namespace trustep::experts {

void ExpertBankConfig::validate() const {
  TRUSTEP_CHECK_AS(OptionError, hidden >= 1, "invalid value '{}' for option '--hidden': must be >= 1", hidden);
  TRUSTEP_CHECK_AS(OptionError, ffn >= 1, "invalid value '{}' for option '--ffn': must be >= 1", ffn);
  TRUSTEP_CHECK_AS(OptionError, num_experts >= 1, "invalid value '{}' for option '--experts': must be >= 1",
                   num_experts);
  TRUSTEP_CHECK_AS(OptionError, dtype == c10::ScalarType::Float || dtype == c10::ScalarType::BFloat16,
                   "invalid value '{}' for option '--dtype': experts run in fp32 or bf16", dtype_name(dtype));
  TRUSTEP_CHECK_AS(OptionError, local_experts >= 1 && first_expert >= 0 && first_expert + local_experts <= num_experts,
                   "expert bank: local experts [{}, {}) (first_expert {}, local_experts {}) are not a non-empty "
                   "range of the {} experts of option '--experts'",
                   first_expert, first_expert + local_experts, first_expert, local_experts, num_experts);
}

std::string hf_weight_name(const std::string& prefix, int64_t expert, const char* proj) {
  return fmt::format("{}experts.{}.{}_proj.weight", prefix, expert, proj);
}

void init_expert(uint64_t seed, int64_t expert, const at::Tensor& gate, const at::Tensor& up,
                 const at::Tensor& down) {
  // Unsigned wrap-around is intended: any seed gives a well-defined generator seed.
  at::Generator gen = at::detail::createCPUGenerator(seed * 1000003ULL + static_cast<uint64_t>(expert));
  const double bound_h = 1.0 / std::sqrt(static_cast<double>(gate.size(1)));  // fan_in H
  const double bound_f = 1.0 / std::sqrt(static_cast<double>(down.size(1)));  // fan_in F
  gate.uniform_(-bound_h, bound_h, gen);
  up.uniform_(-bound_h, bound_h, gen);
  down.uniform_(-bound_f, bound_f, gen);
}

ExpertBankImpl::ExpertBankImpl(const ExpertBankConfig& config) : config_(config) {
  config_.validate();
  const int64_t L = config.local_experts, H = config.hidden, F = config.ffn;
  // Drawn in fp32 on the CPU, then cast: identical weights for every dtype and world layout.
  at::Tensor g = at::empty({L, F, H}, at::kFloat);  // [L, F, H]
  at::Tensor u = at::empty({L, F, H}, at::kFloat);  // [L, F, H]
  at::Tensor d = at::empty({L, H, F}, at::kFloat);  // [L, H, F]
  for (int64_t i = 0; i < L; ++i) init_expert(config.seed, config.first_expert + i, g[i], u[i], d[i]);
  gate = register_parameter("gate", g.to(config.dtype));
  up = register_parameter("up", u.to(config.dtype));
  down = register_parameter("down", d.to(config.dtype));
}

at::Tensor ExpertBankImpl::forward(const at::Tensor& x, const std::vector<int64_t>& counts) {
  const int64_t L = config_.local_experts, H = config_.hidden;
  TRUSTEP_CHECK(x.defined() && x.dim() == 2 && x.size(1) == H, "expert bank: x must be [N, {}], got [{}]", H,
                x.defined() ? fmt::format("{}", fmt::join(x.sizes(), ", ")) : "undefined");
  if (x.scalar_type() != config_.dtype) {
    const std::string expected = dtype_name(config_.dtype), actual = dtype_name(x.scalar_type());
    throw ContractViolation(fmt::format("contract violation at boundary '{}' (expert bank of experts [{}, {})): "
                                        "expected x in {}, got {}",
                                        boundary::kExpertIn, config_.first_expert, config_.first_expert + L, expected,
                                        actual),
                            TRUSTEP_ORIGIN, false, boundary::kExpertIn, expected, actual, -1);
  }
  TRUSTEP_CHECK(x.device() == gate.device(), "expert bank: x is on {} but the expert weights are on {}",
                x.device().str(), gate.device().str());
  TRUSTEP_CHECK(static_cast<int64_t>(counts.size()) == L,
                "expert bank: counts must have one entry per local expert ({}), got {}", L, counts.size());
  int64_t total = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    TRUSTEP_CHECK(counts[i] >= 0, "expert bank: counts[{}] = {} is negative", i, counts[i]);
    total += counts[i];
  }
  TRUSTEP_CHECK(total == x.size(0), "expert bank: counts sum to {} but x has {} rows (counts [{}])", total,
                x.size(0), fmt::join(counts, ", "));
  // Nothing to compute; a fresh [0, H] still carries x's autograd history.
  if (total == 0) return x.clone();

  // One unbind per weight: its backward stacks the per-expert gradients in one allocation
  // (select would allocate a full [L, F, H] zero gradient per expert).
  const std::vector<at::Tensor> wg = gate.unbind(0), wu = up.unbind(0), wd = down.unbind(0);
  std::vector<at::Tensor> outs;
  outs.reserve(L);
  int64_t offset = 0;
  for (int64_t i = 0; i < L; ++i) {
    const int64_t n = counts[i];
    if (n == 0) continue;
    const at::Tensor xs = x.narrow(0, offset, n);                                  // [n, H]
    const at::Tensor h = at::silu(at::linear(xs, wg[i])) * at::linear(xs, wu[i]);  // [n, F]
    outs.push_back(at::linear(h, wd[i]));                                          // [n, H]
    offset += n;
  }
  return outs.size() == 1 ? outs.front() : at::cat(outs, 0);  // [N, H]
}

void ExpertBankImpl::load_hf(const std::string& path, const std::string& prefix) {
  const int64_t L = config_.local_experts, H = config_.hidden, F = config_.ffn;
  struct Slot {
    std::string name;
    at::Tensor* target;
    std::vector<int64_t> shape;
  };
  std::vector<Slot> slots;
  for (int64_t i = 0; i < L; ++i) {
    const int64_t e = config_.first_expert + i;
    slots.push_back({hf_weight_name(prefix, e, "gate"), &gate, {F, H}});
    slots.push_back({hf_weight_name(prefix, e, "up"), &up, {F, H}});
    slots.push_back({hf_weight_name(prefix, e, "down"), &down, {H, F}});
  }
  std::unordered_set<std::string> wanted;
  for (const Slot& s : slots) wanted.insert(s.name);
  // Only this rank's byte ranges are read: other experts may be large, or even broken.
  SafetensorsFile file = load_safetensors(path, [&](const std::string& name) { return wanted.count(name) > 0; });

  // Check everything before changing anything, so a failed load leaves the bank as it was.
  for (const Slot& s : slots) {
    auto it = file.tensors.find(s.name);
    TRUSTEP_CHECK(it != file.tensors.end(),
                  "{}: missing tensor '{}' (expected [{}] for expert bank of experts [{}, {}))", path, s.name,
                  fmt::join(s.shape, ", "), config_.first_expert, config_.first_expert + L);
    const at::Tensor& t = it->second;
    TRUSTEP_CHECK(t.sizes() == c10::IntArrayRef(s.shape), "{}: tensor '{}' has shape [{}], expected [{}]", path,
                  s.name, fmt::join(t.sizes(), ", "), fmt::join(s.shape, ", "));
    TRUSTEP_CHECK(t.is_floating_point(), "{}: tensor '{}' is {}, expected a floating-point dtype", path, s.name,
                  dtype_name(t.scalar_type()));
    TRUSTEP_CHECK(t.numel() == 0 || at::isfinite(t).all().item<bool>(), "{}: tensor '{}' contains NaN or Inf", path,
                  s.name);
  }
  at::NoGradGuard no_grad;
  for (size_t k = 0; k < slots.size(); ++k) {
    const Slot& s = slots[k];
    s.target->select(0, static_cast<int64_t>(k / 3)).copy_(file.tensors.at(s.name));  // casts to the bank dtype
  }
}

void save_hf(const ExpertBankImpl& bank, const std::string& path, const std::string& prefix) {
  const ExpertBankConfig& c = bank.config();
  TensorMap tensors;
  for (int64_t i = 0; i < c.local_experts; ++i) {
    const int64_t e = c.first_expert + i;
    tensors[hf_weight_name(prefix, e, "gate")] = bank.gate[i].detach();  // [F, H]
    tensors[hf_weight_name(prefix, e, "up")] = bank.up[i].detach();      // [F, H]
    tensors[hf_weight_name(prefix, e, "down")] = bank.down[i].detach();  // [H, F]
  }
  save_safetensors(path, tensors, {{"format", "pt"}});
}

}  // namespace trustep::experts

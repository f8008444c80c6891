#include "model/moe_layer.h"

#include "core/dtype.h"
#include "core/error.h"
#include "core/safetensors.h"
#include "core/trace.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/randn.h>
#include <c10/core/GradMode.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>

namespace trustep::model {
namespace {

routing::SelectorConfig selector_config(const MoELayerConfig& c) {
  routing::SelectorConfig s = c.selector;
  s.experts = c.experts;
  s.top_k = c.top_k;
  return s;
}

routing::RouterConfig router_config(const MoELayerConfig& c, int rank) {
  routing::RouterConfig r;
  r.hidden = c.hidden;
  r.experts = c.experts;
  r.dtype = c.router_dtype;
  r.check_finite = c.check_finite;
  r.layer = c.layer;
  r.rank = rank;
  r.seed = c.seed * 7919 + static_cast<uint64_t>(c.layer);
  return r;
}

experts::ExpertBankConfig bank_config(const MoELayerConfig& c, const dispatch::ExpertLayout& layout) {
  experts::ExpertBankConfig b;
  b.hidden = c.hidden;
  b.ffn = c.ffn;
  b.num_experts = c.experts;
  b.first_expert = layout.first_local();
  b.local_experts = layout.per_rank();
  b.dtype = c.dtype;
  b.seed = c.seed * 7919 + static_cast<uint64_t>(c.layer);
  return b;
}

// splitmix64 finaliser: decorrelates nearby (seed, layer, call) triples.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// What every rank's layer must agree on, as "key=value" lines (Communicator::check_same_settings).
std::string settings_of(const MoELayerConfig& c) {
  const auto& s = c.selector;
  return fmt::format(
      "hidden={}\nffn={}\nexperts={}\ntop_k={}\ndtype={}\ncomm_dtype={}\nrouter_dtype={}\nmode={}\nalpha={}\n"
      "epsilon={}\noverflow={}\ncapacity_factor={}\nsubstitute_min_trust={}\nseed={}\ncheck_finite={}\n",
      c.hidden, c.ffn, c.experts, c.top_k, dtype_name(c.dtype), dtype_name(c.comm_dtype), dtype_name(c.router_dtype),
      routing::mode_name(s.mode), s.alpha, s.epsilon, routing::overflow_name(s.overflow), s.capacity_factor,
      s.substitute_min_trust, c.seed, c.check_finite);
}

// Collective, before anything that could fail on some ranks only: a layer whose ranks were
// configured differently would otherwise exchange rows of different widths or route tokens to
// experts that do not exist elsewhere.
const MoELayerConfig& agreed(const MoELayerConfig& config, comm::Communicator& comm) {
  comm.check_same_settings(settings_of(config), fmt::format("the settings of MoE layer {}", config.layer));
  return config;
}

}  // namespace

MoELayerImpl::MoELayerImpl(const MoELayerConfig& config, comm::Communicator& comm)
    : config_(agreed(config, comm)),
      selector_(selector_config(config), config.device),
      dispatcher_(comm, dispatch::ExpertLayout::make(config.experts, comm.size(), comm.rank()), config.comm_dtype,
                  config.dtype) {
  router = register_module("router", std::make_shared<routing::RouterImpl>(router_config(config, comm.rank())));
  experts = register_module("experts",
                            std::make_shared<experts::ExpertBankImpl>(bank_config(config, dispatcher_.layout())));
}

void MoELayerImpl::load_hf(const std::string& path, const std::string& prefix) {
  const std::string name = prefix + "gate.weight";
  const auto file = load_safetensors(path, [&](const std::string& n) { return n == name; });
  auto it = file.tensors.find(name);
  TRUSTEP_CHECK(it != file.tensors.end(), "{}: router weight '{}' not found", path, name);
  TRUSTEP_CHECK(it->second.dim() == 2 && it->second.size(0) == config_.experts && it->second.size(1) == config_.hidden,
                "{}: router weight '{}' must be [{}, {}], got [{}]", path, name, config_.experts, config_.hidden,
                fmt::join(it->second.sizes(), ", "));
  experts->load_hf(path, prefix);  // checks everything before changing anything
  c10::NoGradGuard no_grad;
  router->weight.copy_(it->second.to(router->weight.scalar_type()));
}

MoEOutput MoELayerImpl::forward(const at::Tensor& x, const routing::SelectorInputs& trust) {
  TRUSTEP_CHECK(x.dim() >= 2 && x.size(-1) == config_.hidden, "MoE layer {}: input must be [..., {}], got ndim {}",
                config_.layer, config_.hidden, x.dim());
  trace::Scope layer_span("moe.layer", config_.layer);
  const at::Tensor tokens = x.reshape({-1, config_.hidden});  // [T, H]
  MoEOutput out;
  routing::RouterOutput r;
  {
    trace::Scope span("moe.route", config_.layer);
    // --check-finite: the router's local check, turned into one error on every rank (a NaN on
    // one rank would otherwise end the job from there, leaving peers to be killed unexplained).
    if (config_.check_finite)
      dispatcher_.comm().fail_together([&] { r = router->forward(tokens); },
                                       fmt::format("MoE layer {} (--check-finite)", config_.layer));
    else
      r = router->forward(tokens);
    routing::SelectorInputs in = trust;
    in.probs = r.probs;
    out.selection = selector_.select(in);
    out.balance_loss = routing::load_balancing_loss(r.probs, out.selection.experts);
  }
  auto d = dispatcher_.dispatch(tokens, out.selection.experts, config_.layer);
  at::Tensor y;
  {
    trace::Scope span("moe.experts", config_.layer);
    y = experts->forward(d.rows, d.plan.local_counts);  // [R, H] expert-major
    if (!poison_.empty()) y = apply_poison(y, d.plan.local_counts);
  }
  out.hidden = dispatcher_.combine(y, d.plan, out.selection.weights, x.scalar_type(), config_.layer).view(x.sizes());
  out.z_loss = r.z_loss;
  return out;
}

PoisonKind parse_poison_kind(const std::string& name, const std::string& option) {
  if (name == "noise") return PoisonKind::kNoise;
  if (name == "nan") return PoisonKind::kNaN;
  throw OptionError(fmt::format("invalid value '{}' for option '{}': expected noise or nan", name, option),
                    TRUSTEP_ORIGIN);
}

const char* poison_kind_name(PoisonKind kind) { return kind == PoisonKind::kNoise ? "noise" : "nan"; }

void MoELayerImpl::set_poison(std::vector<int64_t> global_experts, uint64_t seed, PoisonKind kind) {
  for (int64_t e : global_experts)
    TRUSTEP_CHECK_AS(OptionError, e >= 0 && e < config_.experts,
                     "invalid value '{}' for option '--poison-experts': experts are 0..{} (option '--experts' = {})",
                     e, config_.experts - 1, config_.experts);
  std::sort(global_experts.begin(), global_experts.end());
  global_experts.erase(std::unique(global_experts.begin(), global_experts.end()), global_experts.end());
  poison_ = std::move(global_experts);
  poison_seed_ = seed;
  poison_kind_ = kind;
  poison_calls_ = 0;
}

void MoELayerImpl::clear_poison() {
  poison_.clear();
  poison_calls_ = 0;
}

at::Tensor MoELayerImpl::apply_poison(const at::Tensor& y, const std::vector<int64_t>& local_counts) {
  // One generator per call, on the CPU: the same noise for the same (seed, layer, call) on any
  // device; the counter advances even when no poisoned row arrived here, so it stays in step.
  const uint64_t call = poison_calls_++;
  at::Generator gen =
      at::detail::createCPUGenerator(mix(poison_seed_ ^ mix(static_cast<uint64_t>(config_.layer) ^ mix(call))));
  const int64_t first = dispatcher_.layout().first_local(), H = config_.hidden;
  std::vector<at::Tensor> parts;
  bool any = false;
  int64_t offset = 0;
  for (size_t i = 0; i < local_counts.size(); ++i) {
    const int64_t n = local_counts[i];
    if (n == 0) continue;
    at::Tensor seg = y.narrow(0, offset, n);  // [n, H] rows of local expert i
    offset += n;
    if (std::binary_search(poison_.begin(), poison_.end(), first + static_cast<int64_t>(i))) {
      if (poison_kind_ == PoisonKind::kNaN) {
        seg = at::full({n, H}, std::nan(""), y.options());
      } else {
        // Same scale as the real output; a detached constant, so no gradient reaches the expert.
        const double scale = seg.numel() > 1 ? seg.detach().to(at::kFloat).std().item<double>() : 0.0;
        at::Tensor noise = at::randn({n, H}, gen, at::TensorOptions().dtype(at::kFloat));  // [n, H]
        seg = (noise * (std::isfinite(scale) ? scale : 0.0)).to(y.options());
      }
      any = true;
    }
    parts.push_back(seg);
  }
  if (!any) return y;
  // An empty slice keeps the result connected to y even when every row is noise, so the
  // backward all-to-all behind the expert bank still runs here (peers wait for it); the
  // poisoned experts' weights receive zero gradient.
  parts.push_back(y.narrow(0, 0, 0));
  return at::cat(parts, 0);  // [R, H]
}

}  // namespace trustep::model

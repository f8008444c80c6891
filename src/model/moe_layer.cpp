#include "model/moe_layer.h"

#include "core/error.h"
#include "core/safetensors.h"

#include <c10/core/GradMode.h>
#include <fmt/ranges.h>

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

}  // namespace

MoELayerImpl::MoELayerImpl(const MoELayerConfig& config, comm::Communicator& comm)
    : config_(config),
      selector_(selector_config(config), c10::Device(c10::kCPU)),
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
  const at::Tensor tokens = x.reshape({-1, config_.hidden});  // [T, H]
  const routing::RouterOutput r = router->forward(tokens);
  routing::SelectorInputs in = trust;
  in.probs = r.probs;
  MoEOutput out;
  out.selection = selector_.select(in);
  auto d = dispatcher_.dispatch(tokens, out.selection.experts, config_.layer);
  const at::Tensor y = experts->forward(d.rows, d.plan.local_counts);
  out.hidden = dispatcher_.combine(y, d.plan, out.selection.weights, x.scalar_type(), config_.layer).view(x.sizes());
  out.z_loss = r.z_loss;
  out.balance_loss = routing::load_balancing_loss(r.probs, out.selection.experts);
  return out;
}

}  // namespace trustep::model

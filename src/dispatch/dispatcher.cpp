#include "dispatch/dispatcher.h"

#include "core/contract.h"
#include "core/error.h"
#include "core/trace.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/argsort.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/index_add.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/autograd/custom_function.h>

#include <numeric>
#include <optional>

namespace trustep::dispatch {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

Contract row_contract(const char* boundary, c10::ScalarType dtype, const at::Tensor& like) {
  return Contract{boundary, dtype, like.device().type(), 2, true};
}

// The exchange as an autograd node: backward is the same exchange with the counts swapped.
struct AllToAllRows : public torch::autograd::Function<AllToAllRows> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& rows, int64_t comm_ptr,
                            std::vector<int64_t> send_counts, std::vector<int64_t> recv_counts,
                            std::string boundary, int64_t layer) {
    auto& comm = *reinterpret_cast<comm::Communicator*>(comm_ptr);
    trace::Scope span("moe.exchange", static_cast<int>(layer));
    auto result = comm.all_to_all_v(rows.contiguous(), send_counts, row_contract(boundary.c_str(), rows.scalar_type(), rows),
                                    static_cast<int>(layer));
    TRUSTEP_CHECK(result.recv_counts == recv_counts,
                  "dispatch: rank {} expected other receive counts at boundary '{}' (counts exchange and rows "
                  "disagree)",
                  comm.rank(), boundary);
    ctx->saved_data["comm"] = comm_ptr;
    ctx->saved_data["send"] = send_counts;
    ctx->saved_data["recv"] = recv_counts;
    ctx->saved_data["boundary"] = boundary + ".grad";
    ctx->saved_data["layer"] = layer;
    return result.recv;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto& comm = *reinterpret_cast<comm::Communicator*>(ctx->saved_data["comm"].toInt());
    const auto send = ctx->saved_data["send"].toIntVector();
    const auto recv = ctx->saved_data["recv"].toIntVector();
    const std::string boundary = ctx->saved_data["boundary"].toStringRef();
    trace::Scope span("moe.exchange.bwd", static_cast<int>(ctx->saved_data["layer"].toInt()));
    const at::Tensor grad = grads[0].contiguous();
    auto back = comm.all_to_all_v(grad, recv, row_contract(boundary.c_str(), grad.scalar_type(), grad),
                                  static_cast<int>(ctx->saved_data["layer"].toInt()));
    return {back.recv, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor host_long(const std::vector<int64_t>& v) {
  return at::from_blob(const_cast<int64_t*>(v.data()), {static_cast<int64_t>(v.size())}, at::kLong).clone();
}

}  // namespace

ExpertLayout ExpertLayout::make(int64_t num_experts, int world, int rank) {
  TRUSTEP_CHECK_AS(OptionError, num_experts >= world && num_experts % world == 0,
                   "invalid value '{}' for option '--experts': {} experts cannot be split evenly over {} ranks "
                   "(experts per rank = E / world must be a whole number >= 1)",
                   num_experts, num_experts, world);
  return ExpertLayout{num_experts, world, rank};
}

at::Tensor all_to_all_rows(comm::Communicator& comm, const at::Tensor& rows, const std::vector<int64_t>& send_counts,
                           const std::vector<int64_t>& recv_counts, const char* boundary, int layer) {
  return AllToAllRows::apply(rows, reinterpret_cast<int64_t>(&comm), send_counts, recv_counts, std::string(boundary),
                             static_cast<int64_t>(layer));
}

Dispatcher::Dispatcher(comm::Communicator& comm, ExpertLayout layout, c10::ScalarType comm_dtype,
                       c10::ScalarType expert_dtype)
    : comm_(comm), layout_(layout), comm_dtype_(comm_dtype), expert_dtype_(expert_dtype) {
  TRUSTEP_CHECK(layout.world == comm.size() && layout.rank == comm.rank(),
                "dispatcher: layout for rank {} of {} used on rank {} of {}", layout.rank, layout.world, comm.rank(),
                comm.size());
}

Dispatched Dispatcher::dispatch(const at::Tensor& hidden, const at::Tensor& experts, int layer) {
  TRUSTEP_CHECK(hidden.dim() == 2 && experts.dim() == 2 && experts.size(0) == hidden.size(0),
                "dispatch (layer {}, rank {}): hidden must be [T, H] and experts [T, k] with the same T", layer,
                comm_.rank());
  const int64_t T = hidden.size(0), k = experts.size(1), E = layout_.num_experts, W = layout_.world;
  const int64_t local = layout_.per_rank();
  Dispatched out;
  DispatchPlan& plan = out.plan;
  plan.tokens = T;
  plan.top_k = k;

  std::optional<trace::Scope> span(std::in_place, "moe.permute", layer);
  // 1. Used slots, stably sorted by expert: rows for one rank, then one expert, are contiguous.
  const at::Tensor flat = experts.reshape({-1}).to(at::kLong);
  const at::Tensor used = (flat >= 0).nonzero().squeeze(1);
  const at::Tensor used_experts = flat.index_select(0, used);
  plan.slot_order = used.index_select(0, at::argsort(used_experts, /*stable=*/true));
  const at::Tensor sorted_experts = flat.index_select(0, plan.slot_order);

  // 2. Rows per expert (host), per destination rank.
  at::Tensor per_expert = at::zeros({E}, flat.options());
  per_expert.index_add_(0, sorted_experts, at::ones_like(sorted_experts));
  const at::Tensor per_expert_cpu = per_expert.cpu();
  const int64_t* pe = per_expert_cpu.data_ptr<int64_t>();
  plan.send_counts.assign(W, 0);
  for (int64_t e = 0; e < E; ++e) plan.send_counts[e / local] += pe[e];

  // 3. Per-expert counts to their owners: rank r receives [W, local] counts (one row per source).
  const at::Tensor counts_send = per_expert_cpu.view({W, local});
  span.emplace("moe.exchange", layer);
  const auto counts = comm_.all_to_all_v(counts_send, std::vector<int64_t>(W, 1),
                                         Contract{"dispatch.counts", at::kLong, c10::DeviceType::CPU, 2, true}, layer);
  const at::Tensor from = counts.recv.contiguous();  // [W, local]: rows from source r for local expert i
  const int64_t* fr = from.data_ptr<int64_t>();
  span.emplace("moe.permute", layer);
  plan.recv_counts.assign(W, 0);
  plan.local_counts.assign(local, 0);
  for (int64_t r = 0; r < W; ++r)
    for (int64_t i = 0; i < local; ++i) {
      plan.recv_counts[r] += fr[r * local + i];
      plan.local_counts[i] += fr[r * local + i];
    }

  // 4. Rows on the wire in the comm dtype.
  const at::Tensor send = hidden.index_select(0, plan.slot_order.div(k, "floor")).to(comm_dtype_);
  span.reset();  // the row exchange records its own span (forward and backward)
  const at::Tensor recv = all_to_all_rows(comm_, send, plan.send_counts, plan.recv_counts, boundary::kDispatchSend, layer);
  span.emplace("moe.permute", layer);

  // 5. Received rows are source-major (then expert); experts want expert-major.
  std::vector<int64_t> regroup;
  const int64_t R = std::accumulate(plan.recv_counts.begin(), plan.recv_counts.end(), int64_t{0});
  regroup.reserve(R);
  std::vector<int64_t> source_start(W * local);
  for (int64_t r = 0, off = 0; r < W; ++r)
    for (int64_t i = 0; i < local; ++i) {
      source_start[r * local + i] = off;
      off += fr[r * local + i];
    }
  for (int64_t i = 0; i < local; ++i)
    for (int64_t r = 0; r < W; ++r)
      for (int64_t j = 0; j < fr[r * local + i]; ++j) regroup.push_back(source_start[r * local + i] + j);
  std::vector<int64_t> ungroup(R);
  for (int64_t p = 0; p < R; ++p) ungroup[regroup[p]] = p;
  plan.regroup = host_long(regroup).to(hidden.device());
  plan.ungroup = host_long(ungroup).to(hidden.device());

  out.rows = ContractChecker().enforce(Contract{boundary::kExpertIn, expert_dtype_, std::nullopt, 2, true},
                                       recv.index_select(0, plan.regroup).to(expert_dtype_), layer);
  return out;
}

at::Tensor Dispatcher::combine(const at::Tensor& expert_out, const DispatchPlan& plan, const at::Tensor& weights,
                               c10::ScalarType out_dtype, int layer) {
  const int64_t R = plan.regroup.size(0);
  std::optional<trace::Scope> span(std::in_place, "moe.combine", layer);
  TRUSTEP_CHECK(expert_out.dim() == 2 && expert_out.size(0) == R,
                "combine (layer {}, rank {}): expert output must be [{}, H], got {} rows", layer, comm_.rank(), R,
                expert_out.dim() == 2 ? expert_out.size(0) : -1);
  ContractChecker().enforce(Contract{boundary::kExpertOut, expert_dtype_, std::nullopt, 2, true}, expert_out, layer);

  // Back to source-major order, then home.
  const at::Tensor source_major = expert_out.index_select(0, plan.ungroup).to(comm_dtype_);
  span.reset();
  const at::Tensor back =
      all_to_all_rows(comm_, source_major, plan.recv_counts, plan.send_counts, boundary::kCombineSend, layer);
  span.emplace("moe.combine", layer);

  // Σ_j w[t, j] · y[t, j], accumulated in fp32.
  const at::Tensor w = weights.reshape({-1}).index_select(0, plan.slot_order).unsqueeze(1);  // [S, 1] fp32
  const at::Tensor contrib = back.to(at::kFloat) * w;                                         // [S, H]
  const at::Tensor tokens = plan.slot_order.div(plan.top_k, "floor");
  at::Tensor sum = at::zeros({plan.tokens, expert_out.size(1)}, contrib.options());
  sum = sum.index_add(0, tokens, contrib);
  return ContractChecker().enforce(Contract{boundary::kCombineOut, out_dtype, std::nullopt, 2, true},
                                   sum.to(out_dtype), layer);
}

}  // namespace trustep::dispatch

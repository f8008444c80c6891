// The only module that moves tokens between ranks. dispatch(): the T×k slots are sorted by
// expert, counts travel first (with the contract header), then the rows, in the comm dtype;
// received rows are regrouped by local expert. combine(): the reverse path, then the
// gate-weighted sum in fp32, returned in the input's dtype. Every exchange is an autograd
// function whose backward is the reverse exchange.
#pragma once

#include "comm/communicator.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace trustep::dispatch {

// Experts are split into equal contiguous blocks: rank r owns [r·E/W, (r+1)·E/W).
struct ExpertLayout {
  int64_t num_experts = 0;
  int world = 1;
  int rank = 0;
  // Throws OptionError when E is not a positive multiple of the world size.
  static ExpertLayout make(int64_t num_experts, int world, int rank);
  int64_t per_rank() const { return num_experts / world; }
  int64_t first_local() const { return rank * per_rank(); }
};

// What the reverse path needs; built by dispatch().
struct DispatchPlan {
  int64_t tokens = 0;                       // T
  int64_t top_k = 0;                        // k
  at::Tensor slot_order;                    // [S] int64 flat slot ids (t·k + j) of used slots, sorted by expert
  std::vector<int64_t> send_counts;         // [W] rows sent to each rank
  std::vector<int64_t> recv_counts;         // [W] rows received from each rank
  at::Tensor regroup;                       // [R] int64: received row for each expert-major position
  at::Tensor ungroup;                       // [R] int64: its inverse (expert-major position of each received row)
  std::vector<int64_t> local_counts;        // [local] rows per local expert (expert-major order)
};

struct Dispatched {
  at::Tensor rows;  // [R, H] this rank's expert inputs, grouped by local expert, in expert_dtype
  DispatchPlan plan;
};

class Dispatcher {
 public:
  // comm_dtype: the wire dtype of token rows (fp32, bf16, fp16); expert_dtype: what the local
  // experts compute in.
  Dispatcher(comm::Communicator& comm, ExpertLayout layout, c10::ScalarType comm_dtype,
             c10::ScalarType expert_dtype);
  const ExpertLayout& layout() const { return layout_; }
  comm::Communicator& comm() const { return comm_; }

  // hidden [T, H]; experts [T, k] int64 global expert ids, −1 = unused slot.
  Dispatched dispatch(const at::Tensor& hidden, const at::Tensor& experts, int layer = -1);
  // expert_out [R, H] (expert-major, as dispatch returned); weights [T, k] fp32 gate weights.
  // Returns [T, H] in out_dtype: Σ_j weights[t, j] · expert output of slot (t, j), summed in fp32.
  at::Tensor combine(const at::Tensor& expert_out, const DispatchPlan& plan, const at::Tensor& weights,
                     c10::ScalarType out_dtype, int layer = -1);

 private:
  comm::Communicator& comm_;
  ExpertLayout layout_;
  c10::ScalarType comm_dtype_;
  c10::ScalarType expert_dtype_;
};

// Differentiable all-to-all-v: forward sends rows with `send_counts` under `boundary`; backward
// sends the gradient back with the counts swapped (boundary + ".grad"). recv_counts must be
// what the forward exchange yields (checked).
at::Tensor all_to_all_rows(comm::Communicator& comm, const at::Tensor& rows, const std::vector<int64_t>& send_counts,
                           const std::vector<int64_t>& recv_counts, const char* boundary, int layer);

}  // namespace trustep::dispatch

// AdamW with fp32 master weights (Loshchilov & Hutter 2019), written here rather than taken
// from torch::optim because the trainer needs two things that one does not give: fp32 master
// copies of bf16 parameters, and state it can slice per expert so that a checkpoint written on
// W ranks loads on any other world size (torch's state is keyed by TensorImpl address).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace trustep::train {

struct AdamWConfig {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;  // decoupled; applied to parameters added with decay = true
  // OptionError naming --beta1, --beta2, --adam-eps or --weight-decay.
  void validate() const;
};

// One parameter and its state. m, v and master are fp32, shaped like the parameter.
struct AdamWSlot {
  std::string name;
  at::Tensor param;   // the model's tensor (fp32 or bf16), updated in place
  at::Tensor master;  // fp32 copy the update is applied to; the parameter itself when fp32
  at::Tensor m, v;    // first and second moments
  at::Tensor grad;    // fp32 gradient for the next step, set by the caller; undefined: param.grad()
  bool decay = true;
};

class AdamW {
 public:
  explicit AdamW(const AdamWConfig& config);
  // Registers a parameter (its current value becomes the master copy).
  void add(const std::string& name, const at::Tensor& param, bool decay);
  // One update of every parameter with gradient grad_scale · (slot.grad, else param.grad());
  // an undefined gradient is zero (an expert that received no rows still has its moments
  // decayed and its weight decay applied). Clears slot.grad.
  void step(double lr, double grad_scale);
  int64_t steps() const { return steps_; }
  void set_steps(int64_t steps) { steps_ = steps; }
  std::vector<AdamWSlot>& slots() { return slots_; }
  const std::vector<AdamWSlot>& slots() const { return slots_; }
  // Copies master back into a bf16 parameter (after loading a master from a checkpoint).
  static void sync_param(AdamWSlot& slot);

 private:
  AdamWConfig config_;
  std::vector<AdamWSlot> slots_;
  int64_t steps_ = 0;
};

// Warm-up then cosine: lr(step) rises linearly over `warmup` steps to `peak`, then follows a
// cosine to `min_lr` at `total` steps (step counts from 0).
double warmup_cosine_lr(int64_t step, int64_t warmup, int64_t total, double peak, double min_lr);

}  // namespace trustep::train

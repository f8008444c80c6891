// The options of `trustep train` and `trustep infer` as Boost descriptions bound to raw argument
// structs; torch-free so the config fuzzer (tests/fuzz) can parse them without the trainer.
#pragma once

#include "core/options.h"

#include <cstdint>
#include <string>

namespace trustep::cli {

// Raw option text of `train`, validated into a TrainConfig by `validate`.
struct TrainArgs {
  // model
  int64_t hidden = 64, layers = 2, heads = 4, kv_heads = 2, ffn = 128, experts = 8, top_k = 2, seq_len = 48;
  std::string dtype = "fp32", comm_dtype;
  // routing
  std::string mode = "blend", overflow = "dropless", context_source = "labels", trust_baseline = "context-target";
  double alpha = 0.5, epsilon = 0.0, capacity_factor = 1.25;
  int64_t contexts = 4;
  double trust_prior = 0.5, trust_min_evidence = 16, trust_lr = 0.1, trust_temperature = 1.0;
  // optimisation
  int64_t steps = 300, warmup = 20, batch = 16;
  double lr = 3e-3, min_lr = 3e-4, weight_decay = 0.1, beta1 = 0.9, beta2 = 0.95, clip = 1.0;
  double balance_coef = 0.01, z_coef = 1e-3;
  uint64_t seed = 0;
  std::string data;
  // faults
  std::string poison_expert, poison_kind = "noise";
  int64_t poison_from = 0;
  // output
  std::string out = "runs/train";
  int64_t checkpoint_every = 0, keep_last = 2, log_every = 10, stop_after = 0, trust_plot_layer = 0;
  std::string resume, trace;
  int64_t trace_steps = 3;
  bool no_plots = false, check_finite = false;
};
void add_train_options(po::options_description& desc, TrainArgs& args);

// Raw option text of `infer`.
struct InferArgs {
  std::string checkpoint;
  std::string prompt;
  int64_t max_new_tokens = 32;
  double temperature = 0.0;  // 0: greedy
  uint64_t seed = 0;
  std::string context = "auto";  // label name or index (labels-trained models); auto: from the prompt
  std::string mode;              // override the selector mode saved in the checkpoint
};
void add_infer_options(po::options_description& desc, InferArgs& args);

}  // namespace trustep::cli

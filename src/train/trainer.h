// The training loop: expert parallelism for the MoE experts, data parallelism for everything
// else, AdamW with fp32 masters, warm-up + cosine learning rate, global-norm clipping, trust
// updates every step from per-token quality, optional expert poisoning, JSONL metrics, plots
// and sharded checkpoints that resume bit for bit (docs/training.md).
#pragma once

#include "comm/communicator.h"
#include "model/transformer.h"
#include "train/optimizer.h"
#include "trust/trust_table.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace trustep::train {

// Where each token's context comes from: the data's label (task family) or the nearest
// centroid of the MoE input (online k-means per layer).
enum class ContextSource { kLabels, kKMeans };
ContextSource parse_context_source(const std::string& name, const std::string& option);
const char* context_source_name(ContextSource source);

// The baseline a token's loss is compared with to make its quality: the mean loss of its
// context, or of its (context, target token) bucket. The second controls for how hard the
// token is (a format character vs an answer digit), which otherwise dominates: without it an
// expert's trust mostly says how easy the tokens routed to it are (docs/trust.md).
enum class TrustBaseline { kContext, kContextTarget };
TrustBaseline parse_trust_baseline(const std::string& name, const std::string& option);
const char* trust_baseline_name(TrustBaseline baseline);

struct TrainConfig {
  model::ModelConfig model;
  AdamWConfig adamw;
  // data
  std::string data;      // text file; empty: the built-in synthetic corpus
  int64_t batch = 16;    // sequences per rank per step
  // schedule
  int64_t steps = 300;
  int64_t warmup = 20;
  double lr = 3e-3;
  double min_lr = 3e-4;
  double clip = 1.0;           // global gradient norm; 0 = off
  double balance_coef = 0.01;  // switch load-balancing loss weight
  double z_coef = 1e-3;        // router z-loss weight
  uint64_t seed = 0;
  // trust
  ContextSource context_source = ContextSource::kLabels;
  int64_t contexts = 4;  // k-means clusters (labels: from the data)
  trust::TrustConfig trust;
  double trust_temperature = 1.0;
  TrustBaseline trust_baseline = TrustBaseline::kContextTarget;
  // fault injection
  std::vector<int64_t> poison_experts;
  int64_t poison_from = 0;
  model::PoisonKind poison_kind = model::PoisonKind::kNoise;
  // output
  std::string out;               // run directory: metrics.jsonl, plots, checkpoints/
  int64_t checkpoint_every = 0;  // 0: only at the end
  int64_t keep_last = 2;         // checkpoints kept (0: all)
  std::string resume;            // checkpoint root or step dir; "auto": OUT/checkpoints if present
  int64_t log_every = 10;
  bool plots = true;
  int64_t trust_plot_layer = 0;
  int64_t stop_after = 0;  // > 0: stop (with a checkpoint) after this many steps of this run
  std::string trace;        // Chrome trace of the last trace_steps steps (rank 0 writes it), empty: off
  int64_t trace_steps = 3;
};

// The training job. Construction and run() are collective; constructing resumes nothing (run()
// does, per config.resume).
class Trainer {
 public:
  Trainer(comm::Communicator& comm, const TrainConfig& config);  // errors: the same on every rank
  ~Trainer();
  int run();  // the whole run: steps, metrics, checkpoints, plots; returns the exit code
  // One optimisation step and nothing else (no metrics, no checkpoint): for benchmarks.
  void step(int64_t step);
  int64_t tokens_per_step() const;  // all ranks

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

// Collective. Returns the process exit code.
int run_train(comm::Communicator& comm, const TrainConfig& config);

// Collective: clears the recorder, lines the ranks' clocks up after a barrier and starts
// recording spans (core/trace.h); on nccl every span waits for the device.
void start_trace(comm::Communicator& comm);
// Collective: stops recording and writes every rank's spans as one Chrome trace (rank 0).
void write_trace(comm::Communicator& comm, const std::string& path, const std::string& title);

}  // namespace trustep::train

// `trustep bench train`: whole training steps of the model `train` would build (same options),
// timed per step and broken down into phases by the program's own spans (core/trace.h):
// data, forward (and inside it the MoE layers' route, permute, exchange, experts, combine),
// backward (and the backward exchanges), gradient all-reduce, optimizer, trust update.
// Reference measured in the same run: the step's own all-to-alls replayed bare (the same
// counts, widths and dtypes through the same communicator, reused buffers, no MoE work), so
// `exchange_share` = bare exchanges / step and `exchange_overhead` = traced exchange time /
// bare exchanges. Nothing is written to disk except --json and --trace.
#pragma once

#include "comm/communicator.h"
#include "core/options.h"
#include "train/trainer.h"

#include <map>
#include <string>
#include <vector>

namespace trustep::bench {

struct TrainBenchArgs {
  int iters = 5;         // timed steps
  int warmup_iters = 2;  // untimed steps before them
  std::string json;
};
void add_train_bench_options(po::options_description& desc, TrainBenchArgs& args);
void validate(const TrainBenchArgs& args);  // OptionError naming the option

struct TrainBenchRecord {
  int world = 1;
  int64_t tokens_per_step = 0;       // all ranks
  double step_us = 0;                // median over steps of the slowest rank
  double tokens_per_s = 0;           // all ranks
  std::map<std::string, double> phase_us;  // span name -> median over steps of the slowest rank
  double bare_exchange_us = 0;       // the step's all-to-alls replayed bare (median, slowest rank)
  int64_t exchanges_per_step = 0;
  double exchange_bytes_per_step = 0;  // bytes this rank sent, max over ranks
  double exchange_share = 0;         // bare_exchange_us / step_us
  double exchange_overhead = 0;      // (moe.exchange + moe.exchange.bwd) / bare_exchange_us
  double peak_rss_mib = 0;           // max over ranks
};

// Collective. config: a validated train config (out, resume and plots are ignored).
TrainBenchRecord measure_train(comm::Communicator& comm, const train::TrainConfig& config,
                               const TrainBenchArgs& args);
// Collective: measure_train, then rank 0 prints the breakdown and writes --json (and --trace
// from the train options). Returns the exit code.
int run_train_bench(comm::Communicator& comm, const train::TrainConfig& config, const TrainBenchArgs& args);

}  // namespace trustep::bench

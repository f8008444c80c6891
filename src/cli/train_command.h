// `trustep train` and `trustep infer`: option text → validated configs (before MPI starts),
// then the collective runs.
#pragma once

#include "cli/train_options.h"
#include "comm/communicator.h"
#include "train/trainer.h"

#include <string>

namespace trustep::cli {

// OptionError naming the option. needs_out = false (benchmarks): --out is neither checked nor created.
train::TrainConfig validate(const TrainArgs& args, bool needs_out = true);
// The check that needs the world size: experts divisible by it (a collective OptionError).
void check_experts_split(const comm::Communicator& comm, const train::TrainConfig& config);
// check_experts_split, then trains. Collective.
int run_train_command(comm::Communicator& comm, const train::TrainConfig& config);

void validate(const InferArgs& args);
// Loads the checkpoint under this world's expert layout and generates (every rank in lockstep;
// rank 0 prints). Collective.
int run_infer(comm::Communicator& comm, const InferArgs& args);

}  // namespace trustep::cli

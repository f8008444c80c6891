// `trustep train` and `trustep infer`: option text → validated configs (before MPI starts),
// then the collective runs.
#pragma once

#include "cli/train_options.h"
#include "comm/communicator.h"
#include "train/trainer.h"

#include <string>

namespace trustep::cli {

train::TrainConfig validate(const TrainArgs& args);  // OptionError naming the option
// Checks that need the world size (experts divisible by it), then trains. Collective.
int run_train_command(comm::Communicator& comm, const train::TrainConfig& config);

void validate(const InferArgs& args);
// Loads the checkpoint under this world's expert layout and generates (every rank in lockstep;
// rank 0 prints). Collective.
int run_infer(comm::Communicator& comm, const InferArgs& args);

}  // namespace trustep::cli

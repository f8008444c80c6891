// `trustep inspect FILE`: what a safetensors file holds; for a routing state, per layer the
// routing statistics and, per context, the most trusted experts.
// `trustep inspect --checkpoint DIR`: a training checkpoint's config, step and loss, its files,
// the trust table per layer, the load per expert and the substitution and drop counts.
#pragma once

#include "core/options.h"

#include <string>

namespace trustep::cli {

struct InspectArgs {
  std::string file;
  std::string checkpoint;  // a training checkpoint (root or step dir) instead of a file
  int top = 3;       // experts listed per context
  bool json = false; // machine-readable output instead of text
};
void add_inspect_options(po::options_description& desc, po::positional_options_description& positional,
                         InspectArgs& args);
void validate(const InspectArgs& args);  // OptionError naming the option
// Reads and prints (no collectives). Returns the exit code.
int run_inspect(const InspectArgs& args);

}  // namespace trustep::cli

// `trustep bench select`: routing::Selector::select (scores, pick, weights, counts, in tensor
// space) against two baselines timed on the same inputs in the same run:
//   prototype  the seed prototype's per-token path (bench/baselines/prototype_select.py, run
//              with the project's Python: tensor → numpy → argsort → list → tensor, one token
//              at a time);
//   host-loop  the optimised C++ host round trip (copy to host, per-token blend + partial_sort
//              + renormalise on one thread, copy back).
// Prints a table and, with --json, records whose speedup_* fields are ratios of tokens/s.
#pragma once

#include "comm/communicator.h"
#include "core/options.h"
#include "routing/selector.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace trustep::bench {

struct SelectBenchOptions {
  std::vector<int64_t> tokens;             // T per point
  std::vector<int64_t> experts;            // E per point
  std::vector<int64_t> top_k;              // k per point (k > E is skipped)
  std::vector<routing::SelectorMode> modes;
  double alpha = 0.5;
  double epsilon = 0.05;
  int iters = 5;
  int warmup = 1;
  routing::SelectorImpl impl = routing::SelectorImpl::kAuto;
  std::string impl_name = "auto";
  bool prototype = true;                   // run the Python prototype baseline
  bool host_loop = true;                   // run the C++ host round-trip baseline
  int64_t prototype_max_tokens = 4096;     // the prototype is timed on min(T, this) tokens
  std::string python;                      // interpreter for the prototype (empty: none found)
  std::string script;                      // bench/baselines/prototype_select.py (empty: not found)
  std::string json;                        // output file (rank 0), empty: none
};

// Raw option text as parsed by Boost, validated into SelectBenchOptions by `validate`.
struct SelectBenchArgs {
  std::string tokens = "4096,65536";
  std::string experts = "8,64,128";
  std::string top_k = "2,8";
  std::string modes = "router,blend,trust-first";
  double alpha = 0.5;
  double epsilon = 0.05;
  int iters = 5;
  int warmup = 1;
  std::string impl = "auto";
  std::string baselines = "prototype,host-loop";
  int64_t prototype_max_tokens = 4096;
  std::string python;  // empty: <repo>/.venv/bin/python
  std::string json;
};
void add_select_bench_options(po::options_description& desc, SelectBenchArgs& args);
// Throws OptionError naming the bad option. Runs before MPI starts, identically on every rank.
SelectBenchOptions validate(const SelectBenchArgs& args);

// Collective in the sense that every rank runs the same work (a per-rank benchmark: nothing is
// exchanged); rank 0 runs the Python prototype, prints and writes --json. Returns the exit code.
int run_select_bench(comm::Communicator& comm, const SelectBenchOptions& options);

// --- pieces exposed for tests ----------------------------------------------------------------

// The repository root: $TRUSTEP_SOURCE_DIR, else the nearest directory above the running
// executable, else above the working directory, that holds bench/baselines/prototype_select.py.
// Empty when none does.
std::string find_repo_root();

// The optimised host round trip: probs/trust/trusted copied to host buffers, then for each token
// on ONE thread: scores (router, blend, or trust-first with exploration drawn from a
// std::mt19937_64 seeded with config.seed), std::partial_sort of expert indices by score (ties →
// lower index), probs renormalised over the k chosen; results written to host vectors and copied
// back into tensors on the inputs' device. Ignores bias/available/cluster/capacity (the benchmark
// uses none of them).
struct HostLoopSelection {
  at::Tensor experts;  // [T, k] int64
  at::Tensor scores;   // [T, k] fp32
  at::Tensor weights;  // [T, k] fp32
  at::Tensor load;     // [E] int64
};
HostLoopSelection host_loop_select(const routing::SelectorConfig& config, const routing::SelectorInputs& in);

// Minimal .npy (format 1.0, C order, little endian) for fp32, int64 and bool tensors.
void write_npy(const std::string& path, const at::Tensor& t);
at::Tensor read_npy(const std::string& path);

// The Python prototype baseline. Inputs go to `dir` as .npy files (the first `tokens` rows).
struct PrototypeInputs {
  at::Tensor logits;       // [T, E] fp32 router logits (the prototype applies softmax itself)
  at::Tensor trust_table;  // [C, E] fp32 trust per context
  at::Tensor context;      // [T] int64 context of each token
  at::Tensor trusted;      // [T] bool (trust-first)
};
void write_prototype_inputs(const std::string& dir, const PrototypeInputs& inputs, int64_t tokens);

struct PrototypeRequest {
  std::string python, script, dir;  // dir: holds the inputs; outputs and stderr go there too
  std::string mode = "blend";       // router, blend, trust-first
  double alpha = 0.5, epsilon = 0.0;
  int64_t top_k = 2;
  int64_t tokens = 0;               // rows to select (0: all written)
  int iters = 1, warmup = 0;
  uint64_t seed = 0;
  std::string device = "cpu";       // where the prototype's logits tensor lives (cpu, cuda)
  bool write_selections = false;    // also write experts.npy / weights.npy into dir and read them
};
struct PrototypeResult {
  bool ok = false;
  std::string reason;  // why not ok
  int64_t tokens = 0;
  double seconds = 0;  // median seconds of one loop over `tokens`
  at::Tensor experts;  // [tokens, k] int64 (write_selections)
  at::Tensor weights;  // [tokens, k] fp32 (write_selections)
};
// Runs the script, parses its JSON line; a failure is a result with a reason, never a throw.
PrototypeResult run_prototype(const PrototypeRequest& request);
// Runs `python script --probe` (imports numpy and torch); empty on success, else the reason.
std::string probe_prototype(const std::string& python, const std::string& script, std::string* versions = nullptr);

}  // namespace trustep::bench

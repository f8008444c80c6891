// `trustep bench comm`: all-to-all-v through trustep's Communicator (header exchange,
// contract checks, watchdog) against the identical raw MPI_Alltoallv (same bytes, same
// counts) timed in the same run; prints a table and, with --json, records with a *_ratio field.
#pragma once

#include "comm/communicator.h"
#include "core/options.h"

#include <c10/core/ScalarType.h>

#include <string>
#include <vector>

namespace trustep::bench {

struct CommBenchOptions {
  std::vector<int64_t> bytes_per_peer;  // mean payload each rank sends to each peer
  std::vector<std::string> skews;       // "uniform", "hot"
  c10::ScalarType dtype = c10::ScalarType::BFloat16;
  int64_t hidden = 1024;                // row width in elements
  double hot_fraction = 0.5;            // share of every rank's rows that goes to the hot rank
  int iters = 20;
  int warmup = 3;
  std::string json;                     // output file (rank 0), empty: none
};

// Raw option text as parsed by Boost, validated into CommBenchOptions by `validate`.
struct CommBenchArgs {
  std::string sizes = "64k,256k,1M,4M";
  std::string skews = "uniform,hot";
  std::string dtype = "bf16";
  int64_t hidden = 1024;
  double hot_fraction = 0.5;
  int iters = 20;
  int warmup = 3;
  std::string json;
};
void add_comm_bench_options(po::options_description& desc, CommBenchArgs& args);
// Throws OptionError naming the bad option. Runs before MPI starts, identically on every rank.
CommBenchOptions validate(const CommBenchArgs& args);

// Collective: every rank calls it. Returns the process exit code.
int run_comm_bench(comm::Communicator& comm, const CommBenchOptions& options);

// Rows each rank sends to each peer: `uniform` spreads `rows_per_rank` evenly; `hot` sends
// `hot_fraction` of them to rank 0 and spreads the rest. Exposed for tests.
std::vector<int64_t> skewed_counts(const std::string& skew, int64_t rows_per_rank, int world, int rank,
                                   double hot_fraction);

}  // namespace trustep::bench

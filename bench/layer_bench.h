// `trustep bench layer`: one model::MoELayer (router → selector → dispatch → SwiGLU experts →
// combine) timed forward (and forward+backward of out.sum() with --backward) against two
// bounds measured in the same run on the same routing:
//   gemm bound  the same local experts (layer.experts->forward) on the very rows and per-expert
//               counts the layer's dispatch produced: forward (and backward) only;
//   raw a2a     comm.all_to_all_v of the same bytes (the dispatch's send counts, comm dtype):
//               twice forward (dispatch + combine), twice more for backward.
// Ratios: gemm_bound_ratio = gemm / layer, a2a_share = raw a2a / layer. Times are the median
// over iterations of the slowest rank. Prints a table and, with --json, records.
#pragma once

#include "comm/communicator.h"
#include "core/options.h"
#include "routing/selector.h"

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>
#include <vector>

namespace trustep::bench {

struct LayerBenchOptions {
  std::vector<int64_t> tokens;  // T per rank, one point each
  int64_t hidden = 512;
  int64_t ffn = 1024;
  int64_t experts = 8;
  int64_t top_k = 2;
  c10::ScalarType dtype = c10::ScalarType::Float;
  c10::ScalarType comm_dtype = c10::ScalarType::Float;
  bool compare_dtypes = false;  // run fp32 and bf16 (comm dtype follows) and report the speedup
  routing::SelectorMode selector = routing::SelectorMode::kRouter;
  int iters = 10;
  int warmup = 2;
  bool backward = false;
  uint64_t seed = 0;
  std::string json;  // output file (rank 0), empty: none
  std::string weights;         // Hugging Face safetensors (router + experts), empty: seeded init
  std::string weights_prefix = "model.layers.0.mlp.";
  std::string input;           // .npy [N, H]: the global batch, split over ranks (dump mode)
  int64_t global_tokens = 0;   // > 0: global batch of N tokens drawn from --seed (dump mode)
  std::string dump_output;     // .npy: run the global batch once, rank 0 writes the whole output
};

// Raw option text as parsed by Boost, validated into LayerBenchOptions by `validate`.
struct LayerBenchArgs {
  std::string tokens = "16,256,4096";
  int64_t hidden = 512;
  int64_t ffn = 1024;
  int64_t experts = 8;
  int64_t top_k = 2;
  std::string dtype = "fp32";
  std::string comm_dtype;  // empty: = --dtype
  bool compare_dtypes = false;
  std::string selector = "router";
  int iters = 10;
  int warmup = 2;
  bool backward = false;
  uint64_t seed = 0;
  std::string json;
  std::string weights;
  std::string weights_prefix = "model.layers.0.mlp.";
  std::string input;
  int64_t global_tokens = 0;
  std::string dump_output;
};
void add_layer_bench_options(po::options_description& desc, LayerBenchArgs& args);
// Throws OptionError naming the bad option. Runs before MPI starts, identically on every rank.
LayerBenchOptions validate(const LayerBenchArgs& args);

// One measured point (times in µs: median over iterations of the slowest rank; 0 = not run).
struct LayerBenchRecord {
  int64_t tokens = 0, hidden = 0, ffn = 0, experts = 0, top_k = 0;
  std::string dtype, comm_dtype, selector;
  int world = 1;
  int64_t expert_rows = 0;     // rows this rank's experts computed (max over ranks)
  double fwd_us = 0, fwd_bwd_us = 0;
  double gemm_fwd_us = 0, gemm_fwd_bwd_us = 0;
  double raw_a2a_us = 0;       // 2 exchanges (forward) or 4 (with --backward)
  double gemm_bound_ratio = 0; // gemm / layer (fwd_bwd with --backward, else fwd)
  double a2a_share = 0;        // raw_a2a / layer
  double tokens_per_s = 0;     // per rank, of the layer (fwd_bwd with --backward, else fwd)
  double bf16_over_fp32_ratio = 0;  // --compare-dtypes, bf16 records: fp32 time / bf16 time
  // The layer step (fwd_bwd with --backward, else fwd) by the layer's own spans, per
  // kLayerPhases name (bench/report.h): median over iterations of the slowest rank.
  std::vector<double> phase_us;
  double expert_weight_mib = 0;  // this rank's expert weights (max over ranks)
  double peak_rss_mib = 0;       // peak resident memory while timing this point (max over ranks)
  double init_peak_rss_mib = 0;  // peak resident memory while building the layer and its inputs
};

// Collective: every rank calls it with the same options. Runs every point and returns the
// records (identical on every rank); prints nothing.
std::vector<LayerBenchRecord> measure_layer(comm::Communicator& comm, const LayerBenchOptions& options);

// Collective, dump mode: the global batch (--input or --seed/--global-tokens) is split over the
// ranks in contiguous blocks, each rank runs its block once, rank 0 gathers the whole output and
// writes it as fp32 .npy: the file is the same (within dtype tolerance) whatever -np is.
void dump_layer_output(comm::Communicator& comm, const LayerBenchOptions& options);

// Collective: measure_layer (or dump_layer_output with --dump-output), then rank 0 prints the
// table and writes --json. Returns the exit code.
int run_layer_bench(comm::Communicator& comm, const LayerBenchOptions& options);

}  // namespace trustep::bench

// The `trustep` program: `trustep <command> [options]`.
//
// Order matters for "fail together, never hang": options are parsed and validated before MPI
// starts (a bad option is exit code 2 on every rank, no collective involved); then ranks check
// they were given the same options; errors raised by every rank together exit cleanly with 1;
// an error on one rank aborts the whole job so that no peer waits forever.
#include "bench/comm_bench.h"
#include "bench/layer_bench.h"
#include "cli/inspect.h"
#include "cli/train_command.h"
#include "bench/select_bench.h"
#include "bench/train_bench.h"
#include "comm/communicator.h"
#include "comm/mpi_runtime.h"
#include "core/contract.h"
#include "core/error.h"
#include "core/log.h"
#include "core/options.h"

#include <fmt/ostream.h>

#include <unistd.h>

#include <functional>
#include <iostream>
#include <map>
#include <optional>

namespace trustep::cli {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

struct Command {
  std::string summary;
  std::function<void(po::options_description&)> add_options;
  std::function<void()> validate;                 // after parsing, before MPI
  std::function<int(comm::Communicator&)> run;    // collective
  po::positional_options_description positional;  // e.g. `inspect FILE`
  std::vector<std::string> config_sections;        // config file sections read (empty: the command's own)
};

void print_usage(std::ostream& out) {
  out << "usage: trustep <command> [options]\n\n"
         "commands:\n"
         "  train         train a small MoE language model (EP + DP, trust-aware routing, checkpoints)\n"
         "  infer         generate from a checkpoint (greedy or sampled, KV cache, any EP layout)\n"
         "  bench comm    all-to-all-v bandwidth against raw MPI_Alltoallv of the same bytes\n"
         "  bench select  expert selection tokens/s against the Python prototype and a C++ host loop\n"
         "  bench layer   one MoE layer fwd/bwd against its expert-GEMM bound and raw all-to-all\n"
         "  bench train   training steps of the `train` model, per phase, against their bare all-to-alls\n"
         "  inspect FILE  describe a safetensors file (routing state: trust, contexts, statistics)\n"
         "  inspect --checkpoint DIR   describe a training checkpoint\n\n"
         "  trustep <command> --help   options of one command\n"
         "  trustep --version          version and build configuration\n";
}

void print_version() {
#ifdef TRUSTEP_HAVE_CUDA
  const char* cuda = "with CUDA/NCCL";
#else
  const char* cuda = "CPU-only (no CUDA/NCCL)";
#endif
  fmt::print("trustep {} ({}), contract version {}\n", TRUSTEP_VERSION, cuda, kContractVersion);
}

// One write(2) per line: under mpirun every rank prints it and pieces must not interleave.
int usage_error(const std::string& message) {
  const std::string line = "trustep: error: " + message + "\n";
  [[maybe_unused]] ssize_t n = ::write(STDERR_FILENO, line.data(), line.size());
  return kExitUsage;
}

int run_command(const std::string& name, Command& command, const std::vector<std::string>& args,
                const std::vector<std::string>& sections, int argc, char** argv) {
  CommonOptions common;
  po::options_description desc(fmt::format("trustep {} ({})", name, command.summary));
  add_common_options(desc, common);
  command.add_options(desc);

  ParsedCommand parsed;
  comm::CommOptions comm_options;
  try {
    parsed = parse_options(name, desc, args, &command.positional, sections, command.config_sections);
    if (parsed.help) {
      std::cout << "usage: trustep " << name << " [options]\n\n" << desc << "\n";
      return kExitOk;
    }
    comm_options.backend = comm::parse_backend(common.backend, "--backend");
    comm::require_backend_built(comm_options.backend);
    comm_options.policy = parse_policy(common.contract_policy, "--contract-policy");
    TRUSTEP_CHECK_AS(OptionError, common.comm_timeout_s > 0,
                     "invalid value '{}' for option '--comm-timeout': must be > 0", common.comm_timeout_s);
    comm_options.timeout_s = common.comm_timeout_s;
    log::set_level(common.log_level);
    command.validate();
  } catch (const OptionError& e) {
    return usage_error(e.what());
  }

  std::optional<comm::MpiSession> mpi;
  std::unique_ptr<comm::Communicator> communicator;
  try {
    if (comm_options.backend != comm::Backend::kSelf) mpi.emplace(&argc, &argv);
    log::set_rank(comm::mpi_world_rank());
    communicator = comm::make_communicator(comm_options);
    communicator->check_same_settings(parsed.settings, "their command line and config file");
    const int code = command.run(*communicator);
    communicator.reset();
    return code;
  } catch (const Error& e) {
    log::error("{}", e.what());
    if (e.collective() || !communicator || communicator->size() == 1) return kExitFailure;
    communicator->abort_job(kExitFailure, "a local error on this rank (see above)");
  } catch (const std::exception& e) {
    log::error("unexpected error: {}", e.what());
    if (!communicator || communicator->size() == 1) return kExitFailure;
    communicator->abort_job(kExitFailure, "an unexpected local error on this rank (see above)");
  }
  return kExitFailure;  // not reached: abort_job does not return
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> words(argv + 1, argv + argc);
  if (words.empty()) {
    print_usage(std::cerr);
    return kExitUsage;
  }
  if (words[0] == "--help" || words[0] == "-h" || words[0] == "help") {
    print_usage(std::cout);
    return kExitOk;
  }
  if (words[0] == "--version") {
    print_version();
    return kExitOk;
  }

  bench::CommBenchArgs comm_args;
  bench::CommBenchOptions comm_options;
  std::map<std::string, Command> commands;
  commands["bench comm"] = Command{
      "all-to-all-v bandwidth against raw MPI_Alltoallv",
      [&](po::options_description& d) { bench::add_comm_bench_options(d, comm_args); },
      [&] { comm_options = bench::validate(comm_args); },
      [&](comm::Communicator& c) { return bench::run_comm_bench(c, comm_options); },
      {}};
  bench::SelectBenchArgs select_args;
  bench::SelectBenchOptions select_options;
  commands["bench select"] = Command{
      "expert selection against the Python prototype and a C++ host loop",
      [&](po::options_description& d) { bench::add_select_bench_options(d, select_args); },
      [&] { select_options = bench::validate(select_args); },
      [&](comm::Communicator& c) { return bench::run_select_bench(c, select_options); },
      {}};

  bench::LayerBenchArgs layer_args;
  bench::LayerBenchOptions layer_options;
  commands["bench layer"] = Command{
      "one MoE layer forward/backward against its expert-GEMM bound and raw all-to-all",
      [&](po::options_description& d) { bench::add_layer_bench_options(d, layer_args); },
      [&] { layer_options = bench::validate(layer_args); },
      [&](comm::Communicator& c) { return bench::run_layer_bench(c, layer_options); },
      {}};

  TrainArgs train_args;
  train::TrainConfig train_config;
  commands["train"] = Command{
      "train a small MoE language model with expert + data parallelism and trust-aware routing",
      [&](po::options_description& d) { add_train_options(d, train_args); },
      [&] { train_config = validate(train_args); },
      [&](comm::Communicator& c) { return run_train_command(c, train_config); },
      {}};
  TrainArgs bench_train_args;
  bench::TrainBenchArgs train_bench_args;
  train::TrainConfig bench_train_config;
  commands["bench train"] = Command{
      "training steps of the train command's model, broken into phases, against their bare all-to-alls",
      [&](po::options_description& d) {
        add_train_options(d, bench_train_args);
        bench::add_train_bench_options(d, train_bench_args);
      },
      [&] {
        bench_train_config = validate(bench_train_args, /*needs_out=*/false);
        bench::validate(train_bench_args);
      },
      [&](comm::Communicator& c) {
        check_experts_split(c, bench_train_config);
        return bench::run_train_bench(c, bench_train_config, train_bench_args);
      },
      {},
      {"train", "bench train"}};  // the model of a preset's [train] section

  InferArgs infer_args;
  commands["infer"] = Command{
      "generate text from a checkpoint",
      [&](po::options_description& d) { add_infer_options(d, infer_args); },
      [&] { validate(infer_args); },
      [&](comm::Communicator& c) { return run_infer(c, infer_args); },
      {}};

  InspectArgs inspect_args;
  commands["inspect"] = Command{
      "describe a safetensors file: routing state, trust, statistics",
      [&](po::options_description& d) { add_inspect_options(d, commands["inspect"].positional, inspect_args); },
      [&] { validate(inspect_args); },
      [&](comm::Communicator& c) { return c.rank() == 0 ? run_inspect(inspect_args) : 0; },
      {}};

  // Config file sections are command names ("[train]", "[bench layer]").
  std::vector<std::string> sections;
  for (const auto& [name, command] : commands) sections.push_back(name);
  // Command names are one or two words ("bench comm").
  for (size_t n : {size_t{2}, size_t{1}}) {
    if (words.size() < n) continue;
    std::string name = words[0];
    for (size_t i = 1; i < n; ++i) name += " " + words[i];
    auto it = commands.find(name);
    if (it != commands.end())
      return run_command(name, it->second, std::vector<std::string>(words.begin() + n, words.end()), sections, argc,
                         argv);
  }
  if (words[0] == "bench")
    return usage_error(words.size() > 1 ? fmt::format("unknown benchmark '{}' (available: comm, select, layer, train)", words[1])
                                        : "'bench' needs a benchmark name (available: comm, select, layer, train)");
  return usage_error(fmt::format("unknown command '{}' (run 'trustep --help')", words[0]));
}

}  // namespace trustep::cli

int main(int argc, char** argv) { return trustep::cli::main(argc, argv); }

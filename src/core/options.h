// Command-line and .ini option parsing (Boost.Program_options) shared by every subcommand.
// Values come from the command line first, then from `--config FILE.ini`; every problem
// becomes one OptionError naming the option (exit code 2 in the CLI).
#pragma once

#include <boost/program_options.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace trustep {

namespace po = boost::program_options;

// Options every subcommand accepts.
struct CommonOptions {
  std::string config;           // .ini file, keys are long option names
  std::string backend = "auto"; // auto | mpi | nccl | self
  double comm_timeout_s = 300;  // watchdog limit per collective
  std::string contract_policy = "strict";
  std::string log_level = "info";
};
void add_common_options(po::options_description& desc, CommonOptions& common);

struct ParsedCommand {
  bool help = false;
  // "key=value" lines, sorted: the command, then every option given on the command line or
  // in the config file's applicable sections (the command line wins), e.g. "--dtype=bf16".
  // Ranks compare them before their first collective (Communicator::check_same_settings).
  std::string settings;
};

// Parses `args` (the words after the subcommand) against `desc`, which must include the
// common options. Throws OptionError: "<command>: <what is wrong with which option>".
// The config file's top-level keys apply to this command, then keys under a section named
// after it (`[train]`, `[bench layer]`); other commands' sections are skipped, so one preset
// serves train, infer and the benchmarks. A section not in `sections` (when given) is an error.
// `read_sections` (when given) replaces the command's own section: `bench train` reads [train]
// and [bench train].
ParsedCommand parse_options(const std::string& command, const po::options_description& desc,
                            const std::vector<std::string>& args,
                            const po::positional_options_description* positional = nullptr,
                            const std::vector<std::string>& sections = {},
                            const std::vector<std::string>& read_sections = {});

// The lines of an .ini text that apply to `command` (see parse_options); exposed for tests.
std::string config_for_command(const std::string& text, const std::string& command,
                               const std::vector<std::string>& sections, const std::string& path,
                               const std::vector<std::string>& read_sections = {});

// Splits "1,2,4k,1M" into byte sizes (k/K = 1024, m/M = 1 MiB, g/G = 1 GiB). Throws OptionError.
std::vector<int64_t> parse_size_list(const std::string& text, const std::string& option);
// Before any work: throws OptionError naming `option` when `path` (non-empty) cannot be created
// or written, so a long run is not lost to a typo at the end. Leaves no file behind.
void check_writable(const std::string& path, const std::string& option);

// Splits "a,b,c" into words; empty items are an OptionError.
std::vector<std::string> parse_word_list(const std::string& text, const std::string& option);


}  // namespace trustep

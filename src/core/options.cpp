#include "core/options.h"

#include "core/error.h"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>

namespace trustep {

void add_common_options(po::options_description& desc, CommonOptions& common) {
  desc.add_options()
      ("help,h", "show this help and exit")
      ("config", po::value(&common.config), "read option values from FILE.ini (command line wins)")
      ("backend", po::value(&common.backend)->default_value(common.backend),
       "communicator: auto (nccl for GPU tensors when present, else mpi), mpi, nccl, self")
      ("comm-timeout", po::value(&common.comm_timeout_s)->default_value(common.comm_timeout_s),
       "seconds a collective may take before the watchdog aborts the job")
      ("contract-policy", po::value(&common.contract_policy)->default_value(common.contract_policy),
       "dtype contract policy: strict (throw) or cast (cast once, count, warn once)")
      ("log-level", po::value(&common.log_level)->default_value(common.log_level),
       "trace, debug, info, warn, error, off");
}

namespace {

// Boost.Program_options (1.74) fills %placeholders% into its messages until none is left, so
// a value or key that itself holds one ("--iters %value%") made what() loop forever. Its
// substitutions are protected: reached through a member pointer, written back percent-encoded.
struct Substitutions : po::error_with_option_name {
  using po::error_with_option_name::m_substitutions;
};

std::string message_of(po::error& e) {
  if (auto* named = dynamic_cast<po::error_with_option_name*>(&e))
    for (auto& [key, value] : named->*(&Substitutions::m_substitutions)) {
      std::string safe;
      for (char c : value) safe += c == '%' ? std::string("%25") : std::string(1, c);
      value = safe;
    }
  return e.what();
}

}  // namespace

std::string config_for_command(const std::string& text, const std::string& command,
                               const std::vector<std::string>& sections, const std::string& path,
                               const std::vector<std::string>& read_sections) {
  std::string kept;
  std::istringstream in(text);
  bool keep = true;  // top-level keys apply to every command
  int line_number = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_number;
    const auto first = line.find_first_not_of(" \t");
    if (first != std::string::npos && line[first] == '[') {
      const auto close = line.find(']', first);
      if (close == std::string::npos)
        throw OptionError(fmt::format("{}: --config file '{}' line {}: unterminated section header", command, path,
                                      line_number),
                          TRUSTEP_ORIGIN);
      const std::string section = line.substr(first + 1, close - first - 1);
      if (!sections.empty() && std::find(sections.begin(), sections.end(), section) == sections.end())
        throw OptionError(fmt::format("{}: --config file '{}' line {}: unknown section [{}] (sections are command "
                                      "names, e.g. [train])",
                                      command, path, line_number, section),
                          TRUSTEP_ORIGIN);
      keep = read_sections.empty()
                 ? section == command
                 : std::find(read_sections.begin(), read_sections.end(), section) != read_sections.end();
      kept += '\n';  // keeps line numbers in Boost's messages
      continue;
    }
    kept += keep ? line : std::string();
    kept += '\n';
  }
  return kept;
}

ParsedCommand parse_options(const std::string& command, const po::options_description& desc,
                            const std::vector<std::string>& args, const po::positional_options_description* positional,
                            const std::vector<std::string>& sections, const std::vector<std::string>& read_sections) {
  ParsedCommand parsed;
  po::variables_map vm;
  try {
    po::command_line_parser parser(args);
    parser.options(desc);
    if (positional) parser.positional(*positional);
    const po::parsed_options from_command_line = parser.run();
    po::store(from_command_line, vm);
    parsed.help = vm.count("help") > 0;
    if (parsed.help) return parsed;
    // The settings as given, the command line first (it wins, as in po::store); defaults are
    // the same binary's everywhere and --config's path may differ where its contents agree.
    std::map<std::string, std::string> given;
    auto note = [&](const po::parsed_options& options) {
      for (const auto& o : options.options) {
        if (o.unregistered || o.string_key == "config") continue;
        std::string value;
        for (const auto& v : o.value) value += (value.empty() ? "" : " ") + v;
        given.emplace("--" + o.string_key, value);
      }
    };
    note(from_command_line);

    std::string config_bytes;
    if (vm.count("config")) {
      const auto path = vm["config"].as<std::string>();
      std::ifstream in(path);
      if (!in) throw OptionError(fmt::format("{}: cannot read --config file '{}'", command, path), TRUSTEP_ORIGIN);
      config_bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
      std::istringstream text(config_for_command(config_bytes, command, sections, path, read_sections));
      const po::parsed_options from_config = po::parse_config_file(text, desc, /*allow_unregistered=*/false);
      po::store(from_config, vm);
      note(from_config);
    }
    po::notify(vm);

    parsed.settings = "command=" + command + "\n";
    for (const auto& [key, value] : given) parsed.settings += key + "=" + value + "\n";
  } catch (po::error& e) {
    throw OptionError(fmt::format("{}: {}", command, message_of(e)), TRUSTEP_ORIGIN);
  }
  return parsed;
}

void check_writable(const std::string& path, const std::string& option) {
  if (path.empty()) return;
  const bool existed = std::filesystem::exists(path);
  const bool ok = std::ofstream(path, std::ios::app).good();
  if (!existed) std::filesystem::remove(path);
  TRUSTEP_CHECK_AS(OptionError, ok, "invalid value '{}' for option '{}': cannot write this file", path, option);
}

std::vector<std::string> parse_word_list(const std::string& text, const std::string& option) {
  std::vector<std::string> words;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    if (item.empty())
      throw OptionError(fmt::format("invalid value '{}' for option '{}': empty list item", text, option),
                        TRUSTEP_ORIGIN);
    words.push_back(item);
  }
  if (words.empty())
    throw OptionError(fmt::format("invalid value '{}' for option '{}': empty list", text, option), TRUSTEP_ORIGIN);
  return words;
}

std::vector<int64_t> parse_size_list(const std::string& text, const std::string& option) {
  std::vector<int64_t> sizes;
  for (const auto& word : parse_word_list(text, option)) {
    size_t used = 0;
    long long value = -1;
    try {
      value = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    int64_t scale = 1;
    if (used + 1 == word.size()) {
      switch (std::tolower(static_cast<unsigned char>(word[used]))) {
        case 'k': scale = int64_t{1} << 10; break;
        case 'm': scale = int64_t{1} << 20; break;
        case 'g': scale = int64_t{1} << 30; break;
        default: used = 0;
      }
      if (used) ++used;
    }
    if (used != word.size() || value <= 0)
      throw OptionError(fmt::format("invalid value '{}' for option '{}': '{}' is not a positive size "
                                    "(e.g. 4096, 64k, 1M)",
                                    text, option, word),
                        TRUSTEP_ORIGIN);
    TRUSTEP_CHECK_AS(OptionError, value <= INT64_MAX / scale,
                     "invalid value '{}' for option '{}': '{}' does not fit in 64 bits", text, option, word);
    sizes.push_back(static_cast<int64_t>(value) * scale);
  }
  return sizes;
}

}  // namespace trustep

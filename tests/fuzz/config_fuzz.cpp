// libFuzzer target: the .ini path of parse_options (the input is the whole --config file), with
// the real common and train options plus two list options parsed as `bench comm` parses them.
// Correct means: bad input raises trustep::OptionError and nothing else; config_for_command keeps
// every line number (each line as it was, or emptied); a file that parses still parses with an
// option on the command line, which wins; accepted list values are positive sizes / non-empty words.
#include "cli/train_options.h"
#include "core/options.h"
#include "fuzz_util.h"

#include <sstream>

namespace {

using namespace trustep;

// The command names main.cpp accepts as config sections.
const std::vector<std::string> kSections = {"bench comm", "bench layer", "bench select", "bench train", "infer", "inspect", "train"};

struct Parsed {
  CommonOptions common;
  cli::TrainArgs train;
  std::string sizes = "4k", skew = "uniform";  // as `bench comm --sizes/--skew`
  ParsedCommand result;
};

void parse(Parsed& p, const std::vector<std::string>& args) {
  po::options_description desc;
  add_common_options(desc, p.common);
  cli::add_train_options(desc, p.train);
  desc.add_options()
      ("sizes", po::value(&p.sizes)->default_value(p.sizes), "byte sizes (list)")
      ("skew", po::value(&p.skew)->default_value(p.skew), "words (list)");
  p.result = parse_options("train", desc, args, nullptr, kSections);
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// Only OptionError is documented for bad option text.
template <typename F>
bool accepts_options(const char* what, F&& f) {
  return fuzz::accepts(what, [&] {
    try {
      f();
    } catch (const OptionError&) {
      throw;
    } catch (const Error& e) {
      fuzz::fail(std::string(what) + " threw trustep::Error that is not an OptionError: " + e.what());
    }
  });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Verdict verdict;
  const std::string text(reinterpret_cast<const char*>(data), size);
  const std::string path = fuzz::scratch() / "input.ini";
  fuzz::write_file(path, text);

  std::string kept;
  if (accepts_options("config_for_command", [&] { kept = config_for_command(text, "train", kSections, path); })) {
    const auto in = lines_of(text), out = lines_of(kept);
    fuzz::require(in.size() == out.size(), "config_for_command changed the number of lines");
    for (size_t i = 0; i < in.size(); ++i)
      fuzz::require(out[i] == in[i] || out[i].empty(),
                    "config_for_command changed line " + std::to_string(i + 1) + " instead of keeping or emptying it");
  }

  Parsed p;
  if (!accepts_options("parse_options", [&] { parse(p, {"--config", path}); })) return 0;
  fuzz::require(!p.result.help, "--help came from a config file");

  Parsed cli;
  fuzz::must_succeed("parse_options(--steps 7 --config)", [&] { parse(cli, {"--steps", "7", "--config", path}); });
  fuzz::require(cli.train.steps == 7, "the config file overrode the command line");

  std::vector<int64_t> sizes;
  bool lists_ok = accepts_options("parse_size_list", [&] { sizes = parse_size_list(p.sizes, "--sizes"); });
  for (int64_t s : sizes) fuzz::require(s > 0, "parse_size_list returned " + std::to_string(s));
  for (const std::string* list : {&p.skew, &p.train.poison_expert}) {
    std::vector<std::string> words;
    if (list->empty()) continue;
    lists_ok = accepts_options("parse_word_list", [&] { words = parse_word_list(*list, "--skew"); }) && lists_ok;
    for (const auto& w : words)
      fuzz::require(!w.empty() && w.find(',') == std::string::npos, "parse_word_list returned '" + w + "'");
  }
  verdict.accepted = lists_ok;
  return 0;
}

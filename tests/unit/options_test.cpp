#include "core/error.h"
#include "core/options.h"

#include <gtest/gtest.h>
#include "tests/unit/test_util.h"

#include <cstdlib>
#include <fstream>

namespace trustep {
namespace {

using trustep::testing::error_of;

struct Parsed {
  CommonOptions common;
  int64_t hidden = 7;
  std::string dtype = "bf16";
  po::options_description desc{"test"};
  Parsed() {
    add_common_options(desc, common);
    desc.add_options()("hidden", po::value(&hidden)->default_value(hidden), "")("dtype", po::value(&dtype), "");
  }
  ParsedCommand parse(const std::vector<std::string>& args) { return parse_options("bench comm", desc, args); }
};

std::string write_ini(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + name;
  std::ofstream(path) << text;
  return path;
}

TEST(Options, CommandLineValuesAndDefaults) {
  Parsed p;
  p.parse({"--hidden", "64", "--backend", "mpi"});
  EXPECT_EQ(p.hidden, 64);
  EXPECT_EQ(p.common.backend, "mpi");
  EXPECT_EQ(p.common.comm_timeout_s, 300);
  EXPECT_EQ(p.common.contract_policy, "strict");
}

TEST(Options, HelpStopsBeforeValidation) {
  Parsed p;
  EXPECT_TRUE(p.parse({"--help", "--hidden", "64"}).help);
}

TEST(Options, UnknownOptionIsNamed) {
  Parsed p;
  EXPECT_EQ(error_of<OptionError>([&] { p.parse({"--hiden", "3"}); }), "bench comm: unrecognised option '--hiden'");
}

TEST(Options, BadValueIsNamed) {
  Parsed p;
  const std::string e = error_of<OptionError>([&] { p.parse({"--hidden", "wide"}); });
  EXPECT_NE(e.find("'--hidden'"), std::string::npos) << e;
  EXPECT_NE(e.find("wide"), std::string::npos) << e;
}

// Found by tests/fuzz: Boost expands %placeholders% in its messages until none is left, so
// these looped forever (and grew the message without bound) before the error was raised.
TEST(Options, PlaceholdersInValuesAndKeysDoNotHang) {
  Parsed p;
  std::string e = error_of<OptionError>([&] { p.parse({"--hidden", "%value%"}); });
  EXPECT_NE(e.find("'--hidden'"), std::string::npos) << e;
  EXPECT_NE(e.find("%25value%25"), std::string::npos) << e;
  e = error_of<OptionError>([&] { p.parse({"--%canonical_option%", "1"}); });
  EXPECT_EQ(e, "bench comm: unrecognised option '--%25canonical_option%25'");
  const auto ini = write_ini("placeholders.ini", "%original_token% = 1\n");
  e = error_of<OptionError>([&] { p.parse({"--config", ini}); });
  EXPECT_EQ(e, "bench comm: unrecognised option '%25original_token%25'");
}

TEST(Options, ConfigFileSuppliesValuesAndCommandLineWins) {
  const auto ini = write_ini("cfg.ini", "# preset\nhidden = 128\ndtype = fp16\n");
  Parsed p;
  p.parse({"--config", ini, "--hidden", "32"});
  EXPECT_EQ(p.hidden, 32);
  EXPECT_EQ(p.dtype, "fp16");
}

TEST(Options, UnknownConfigKeyAndMissingFileAreNamed) {
  const auto ini = write_ini("bad.ini", "hidden = 1\nwidth = 3\n");
  Parsed p;
  EXPECT_EQ(error_of<OptionError>([&] { p.parse({"--config", ini}); }), "bench comm: unrecognised option 'width'");
  Parsed q;
  EXPECT_EQ(error_of<OptionError>([&] { q.parse({"--config", "/no/such.ini"}); }),
            "bench comm: cannot read --config file '/no/such.ini'");
}

TEST(Options, SettingsAreWhatWasGivenWhereverItCameFrom) {
  const auto a = write_ini("a.ini", "hidden = 1\n");
  const auto b = write_ini("b.ini", "hidden = 2\n");
  const auto a_copy = write_ini("a_copy.ini", "hidden = 1\n");
  Parsed p1, p2, p3, p4, p5, p6;
  const std::string sa = p1.parse({"--config", a}).settings;
  EXPECT_EQ(sa, "command=bench comm\n--hidden=1\n");
  EXPECT_EQ(sa, p2.parse({"--config", a_copy}).settings);         // the path does not matter
  EXPECT_EQ(sa, p3.parse({"--hidden", "1"}).settings);            // nor where the value came from
  EXPECT_NE(sa, p4.parse({"--config", b}).settings);
  EXPECT_EQ(p5.parse({"--config", b, "--hidden", "1"}).settings, sa);  // the command line wins
  EXPECT_EQ(p6.parse({"--hidden", "1", "--dtype", "fp32"}).settings, "command=bench comm\n--dtype=fp32\n--hidden=1\n");
}

TEST(Options, SizeLists) {
  EXPECT_EQ(parse_size_list("1,4k,2M,1g", "--sizes"),
            (std::vector<int64_t>{1, 4096, 2 << 20, int64_t{1} << 30}));
  EXPECT_EQ(error_of<OptionError>([] { parse_size_list("4k,,8k", "--sizes"); }),
            "invalid value '4k,,8k' for option '--sizes': empty list item");
  EXPECT_NE(error_of<OptionError>([] { parse_size_list("4x", "--sizes"); }).find("'4x' is not a positive size"),
            std::string::npos);
  EXPECT_NE(error_of<OptionError>([] { parse_size_list("-4", "--sizes"); }).find("not a positive size"), std::string::npos);
  EXPECT_NE(error_of<OptionError>([] { parse_size_list("0", "--sizes"); }).find("not a positive size"), std::string::npos);
  // found by tests/fuzz: the multiplication overflowed (undefined behaviour) instead
  EXPECT_EQ(error_of<OptionError>([] { parse_size_list("4k,9999999999999g", "--sizes"); }),
            "invalid value '4k,9999999999999g' for option '--sizes': '9999999999999g' does not fit in 64 bits");
  EXPECT_EQ(parse_size_list("8589934591g", "--sizes"), (std::vector<int64_t>{int64_t{8589934591} << 30}));
}

TEST(Options, ConfigSectionsApplyToTheirCommandOnly) {
  // Top-level keys apply to every command; [bench comm] to this one; [train] is skipped even
  // though 'layers' is not a bench comm option.
  const auto ini = write_ini("sections.ini",
                             "log-level = warn\n[train]\nlayers = 4\nhidden = 999\n[bench comm]\nhidden = 48\n"
                             "[train]\ndtype = fp32\n");
  Parsed p;
  const std::vector<std::string> sections{"train", "bench comm"};
  parse_options("bench comm", p.desc, {"--config", ini}, nullptr, sections);
  EXPECT_EQ(p.hidden, 48);
  EXPECT_EQ(p.dtype, "bf16");
  EXPECT_EQ(p.common.log_level, "warn");
}

TEST(Options, UnknownConfigSectionIsNamedWithItsLine) {
  const auto ini = write_ini("badsection.ini", "hidden = 3\n\n[trian]\nlayers = 4\n");
  Parsed p;
  EXPECT_EQ(error_of<OptionError>(
                [&] { parse_options("bench comm", p.desc, {"--config", ini}, nullptr, {"train", "bench comm"}); }),
            "bench comm: --config file '" + ini + "' line 3: unknown section [trian] (sections are command names, "
            "e.g. [train])");
}

}  // namespace
}  // namespace trustep

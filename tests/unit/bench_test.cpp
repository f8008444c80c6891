#include "bench/comm_bench.h"
#include "core/error.h"

#include <gtest/gtest.h>

#include <numeric>

namespace trustep::bench {
namespace {

int64_t sum(const std::vector<int64_t>& v) { return std::accumulate(v.begin(), v.end(), int64_t{0}); }

TEST(BenchComm, UniformCountsSpreadEveryRowEvenly) {
  for (int world : {1, 2, 3, 4, 7}) {
    for (int rank = 0; rank < world; ++rank) {
      const auto c = skewed_counts("uniform", 100, world, rank, 0.5);
      ASSERT_EQ(static_cast<int>(c.size()), world);
      EXPECT_EQ(sum(c), 100);
      const auto [lo, hi] = std::minmax_element(c.begin(), c.end());
      EXPECT_LE(*hi - *lo, 1);
    }
  }
}

TEST(BenchComm, HotCountsSendTheHotFractionToRankZero) {
  const auto c = skewed_counts("hot", 1000, 4, 2, 0.5);
  EXPECT_EQ(sum(c), 1000);
  EXPECT_EQ(c[0], 500 + 125);
  EXPECT_EQ(c[1], 125);
  EXPECT_EQ(skewed_counts("hot", 10, 2, 1, 1.0), (std::vector<int64_t>{10, 0}));
}

TEST(BenchComm, ValidationNamesTheBadOption) {
  CommBenchArgs args;
  args.skews = "uniform,zipf";
  try {
    validate(args);
    FAIL();
  } catch (const OptionError& e) {
    EXPECT_NE(std::string(e.what()).find("option '--skew': 'zipf'"), std::string::npos) << e.what();
  }
  args = CommBenchArgs{};
  args.hot_fraction = 1.5;
  EXPECT_THROW(validate(args), OptionError);
  args = CommBenchArgs{};
  args.dtype = "int64";
  EXPECT_THROW(validate(args), OptionError);
  args = CommBenchArgs{};
  const auto ok = validate(args);
  EXPECT_EQ(ok.dtype, c10::ScalarType::BFloat16);
  EXPECT_EQ(ok.bytes_per_peer.size(), 4u);
}

}  // namespace
}  // namespace trustep::bench

#include "train/data.h"

#include "core/error.h"
#include "tests/unit/test_util.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/equal.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include <unistd.h>

namespace trustep::train {
namespace {

using testing::error_of;

DataConfig config(int64_t batch = 12, int64_t seq_len = 64, int rank = 0, int world = 1, uint64_t seed = 7) {
  DataConfig c;
  c.batch = batch;
  c.seq_len = seq_len;
  c.seed = seed;
  c.rank = rank;
  c.world = world;
  return c;
}

bool same(const Batch& a, const Batch& b) {
  return at::equal(a.tokens, b.tokens) && at::equal(a.targets, b.targets) && at::equal(a.mask, b.mask) &&
         at::equal(a.context, b.context);
}

// The full row (seq_len + 1 tokens) of sequence r: tokens plus the last target.
std::vector<int64_t> full_row(const Batch& b, int64_t r) {
  const int64_t s = b.tokens.size(1);
  std::vector<int64_t> row(b.tokens[r].data_ptr<int64_t>(), b.tokens[r].data_ptr<int64_t>() + s);
  row.push_back(b.targets[r][s - 1].item<int64_t>());
  return row;
}

void expect_well_formed(const Batch& b, int64_t batch, int64_t seq_len, int64_t contexts) {
  for (const auto* t : {&b.tokens, &b.targets, &b.mask}) {
    EXPECT_EQ(t->sizes(), (std::vector<int64_t>{batch, seq_len}));
    EXPECT_TRUE(t->is_contiguous());
    EXPECT_TRUE(t->device().is_cpu());
  }
  EXPECT_EQ(b.tokens.scalar_type(), at::kLong);
  EXPECT_EQ(b.targets.scalar_type(), at::kLong);
  EXPECT_EQ(b.mask.scalar_type(), at::kBool);
  EXPECT_EQ(b.context.scalar_type(), at::kLong);
  EXPECT_EQ(b.context.sizes(), (std::vector<int64_t>{batch}));
  // targets are tokens shifted by one
  EXPECT_TRUE(at::equal(b.tokens.slice(1, 1), b.targets.slice(1, 0, seq_len - 1)));
  EXPECT_GE(b.tokens.min().item<int64_t>(), 0);
  EXPECT_LT(b.tokens.max().item<int64_t>(), kVocabSize);
  EXPECT_GE(b.context.min().item<int64_t>(), 0);
  EXPECT_LT(b.context.max().item<int64_t>(), contexts);
}

TEST(Data, SyntheticShapesAndMasks) {
  auto src = make_synthetic(config());
  EXPECT_EQ(src->contexts(), kSyntheticContexts);
  EXPECT_EQ(src->context_names(),
            (std::vector<std::string>{"copy", "reverse", "sort", "add", "brackets", "rotate"}));
  const Batch b = src->batch(3);
  expect_well_formed(b, 12, 64, kSyntheticContexts);
  // mask is false exactly on padding targets; padding only trails
  EXPECT_TRUE(at::equal(b.mask, b.targets != kPad));
  for (int64_t r = 0; r < 12; ++r) {
    auto row = full_row(b, r);
    EXPECT_EQ(row[0], kBos);
    auto first_pad = std::find(row.begin(), row.end(), kPad);
    EXPECT_TRUE(std::all_of(first_pad, row.end(), [](int64_t t) { return t == kPad; }));
    ASSERT_NE(first_pad, row.begin());
    EXPECT_EQ(*(first_pad - 1), kEos) << decode(row.data(), row.size());
  }
}

TEST(Data, SyntheticIsAPureFunctionOfStep) {
  auto a = make_synthetic(config());
  auto b = make_synthetic(config());
  const Batch first = a->batch(5);
  a->batch(6);  // no hidden state: other calls change nothing
  EXPECT_TRUE(same(first, a->batch(5)));
  EXPECT_TRUE(same(first, b->batch(5)));
  EXPECT_FALSE(same(first, a->batch(4)));
  EXPECT_FALSE(at::equal(first.tokens, make_synthetic(config(12, 64, 0, 1, 8))->batch(5).tokens));
}

TEST(Data, SyntheticRanksSeeDisjointRowsOfOneGlobalBatch) {
  auto r0 = make_synthetic(config(6, 32, 0, 2));
  auto r1 = make_synthetic(config(6, 32, 1, 2));
  const Batch b0 = r0->batch(2), b1 = r1->batch(2);
  for (int64_t i = 0; i < 6; ++i) {
    for (int64_t j = 0; j < 6; ++j) EXPECT_FALSE(at::equal(b0.tokens[i], b1.tokens[j])) << i << " " << j;
  }
  // The union of the ranks' rows is the world-1 batch of the same global size.
  const Batch whole = make_synthetic(config(12, 32, 0, 1))->batch(2);
  EXPECT_TRUE(at::equal(whole.tokens, at::cat({b0.tokens, b1.tokens})));
  EXPECT_TRUE(at::equal(whole.context, at::cat({b0.context, b1.context})));
}

// Splits a row into its examples "tag:operand=answer" (between <bos> and <eos>).
std::vector<std::string> examples_of(const std::vector<int64_t>& row) {
  std::vector<std::string> out;
  std::string cur;
  bool in = false;
  for (int64_t t : row) {
    if (t == kBos) {
      in = true;
      cur.clear();
    } else if (t == kEos) {
      if (in) out.push_back(cur);
      in = false;
    } else if (in) {
      EXPECT_LT(t, 256);
      cur.push_back(static_cast<char>(t));
    }
  }
  return out;
}

// Independent of the library's answer code.
std::string expected_answer(const std::string& tag, const std::string& x) {
  std::string a = x;
  if (tag == "cpy") return a;
  if (tag == "rev") return {x.rbegin(), x.rend()};
  if (tag == "srt") {
    std::sort(a.begin(), a.end());
    return a;
  }
  if (tag == "rot") {
    for (char& c : a) c = c == 'h' ? 'a' : static_cast<char>(c + 1);
    return a;
  }
  if (tag == "add") {
    int s = (std::stoi(x.substr(0, 2)) + std::stoi(x.substr(3, 2))) % 100;
    return fmt::format("{:02d}", s);
  }
  if (tag == "brk") {
    std::string close;
    for (char c : x) {
      if (c == '(' || c == '[' || c == '{') close.insert(close.begin(), c == '(' ? ')' : c == '[' ? ']' : '}');
      else {
        EXPECT_FALSE(close.empty());
        EXPECT_EQ(close.front(), c) << x;
        close.erase(close.begin());
      }
    }
    EXPECT_FALSE(close.empty()) << x;
    return close;
  }
  ADD_FAILURE() << "unknown tag " << tag;
  return {};
}

TEST(Data, SyntheticAnswersAreCorrectAndEveryFamilyAppears) {
  const char* tags[] = {"cpy", "rev", "srt", "add", "brk", "rot"};
  auto src = make_synthetic(config(12, 64));
  std::set<int64_t> seen;
  int checked = 0;
  for (int64_t step = 0; step < 4; ++step) {
    const Batch b = src->batch(step);
    for (int64_t r = 0; r < 12; ++r) {
      const int64_t ctx = b.context[r].item<int64_t>();
      seen.insert(ctx);
      auto row = full_row(b, r);
      auto examples = examples_of(row);
      ASSERT_GE(examples.size(), 2u) << decode(row.data(), row.size());  // packed
      for (const auto& e : examples) {
        ASSERT_GE(e.size(), 6u) << e;
        EXPECT_EQ(e.substr(0, 3), tags[ctx]) << e;  // one family per row, the row's context
        auto eq = e.find('=');
        ASSERT_NE(eq, std::string::npos) << e;
        const std::string operand = e.substr(4, eq - 4), answer = e.substr(eq + 1);
        if (e.substr(0, 3) != "add") {
          EXPECT_GE(operand.size(), 2u) << e;
          EXPECT_LE(operand.size(), 8u) << e;
        }
        EXPECT_EQ(answer, expected_answer(e.substr(0, 3), operand)) << e;
        EXPECT_EQ(answer, synthetic_answer(e.substr(0, eq + 1))) << e;
        ++checked;
      }
    }
  }
  EXPECT_EQ(seen.size(), static_cast<size_t>(kSyntheticContexts));
  EXPECT_GT(checked, 100);
}

TEST(Data, SyntheticShortRowsStillHoldWholeExamples) {
  auto src = make_synthetic(config(6, kSyntheticMinSeqLen));
  for (int64_t step = 0; step < 20; ++step) {
    const Batch b = src->batch(step);
    for (int64_t r = 0; r < 6; ++r) {
      auto row = full_row(b, r);
      auto examples = examples_of(row);
      EXPECT_GE(examples.size(), 1u) << decode(row.data(), row.size());
      for (const auto& e : examples) {
        auto eq = e.find('=');
        EXPECT_EQ(e.substr(eq + 1), synthetic_answer(e.substr(0, eq + 1))) << e;
      }
    }
  }
}

TEST(Data, SyntheticBatchIsFast) {
  auto src = make_synthetic(config(16, 64));
  src->batch(0);
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t s = 0; s < 100; ++s) src->batch(s);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / 100;
  EXPECT_LT(ms, 5.0) << "one 16x64 batch takes " << ms << " ms";  // ~0.05 ms; generous for shared CI
}

TEST(Data, ConfigErrorsNameTheOption) {
  EXPECT_NE(error_of<OptionError>([] { make_synthetic(config(0)); }).find("'--batch'"), std::string::npos);
  EXPECT_NE(error_of<OptionError>([] { make_synthetic(config(4, 0)); }).find("'--seq-len'"), std::string::npos);
  EXPECT_NE(error_of<OptionError>([] { make_synthetic(config(4, kSyntheticMinSeqLen - 1)); })
                .find("'--seq-len': the synthetic corpus needs at least 16"),
            std::string::npos);
  EXPECT_NE(error_of([] { make_synthetic(config(4, 32, 2, 2)); }).find("rank 2 is outside a world of 2"),
            std::string::npos);
  EXPECT_NE(error_of([] { make_synthetic(config())->batch(-1); }).find("step -1"), std::string::npos);
}

class TextData : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = (std::filesystem::temp_directory_path() /
             fmt::format("trustep_data_test_{}_{}.txt", ::getpid(),
                         ::testing::UnitTest::GetInstance()->current_test_info()->name()))
                .string();
  }
  void TearDown() override { std::filesystem::remove(path_); }
  void write(const std::string& bytes) { std::ofstream(path_, std::ios::binary) << bytes; }
  std::string path_;
};

TEST_F(TextData, RanksReadDisjointContiguousShards) {
  // Random bytes: any window of 17 bytes occurs once, so each row locates itself in the file.
  std::mt19937_64 rng(1);
  std::string bytes(3001, '\0');
  for (char& c : bytes) c = static_cast<char>(rng() & 0xff);
  write(bytes);
  const int world = 3;
  const int64_t seq = 16;
  for (int r = 0; r < world; ++r) {
    auto src = make_text(config(8, seq, r, world), path_);
    EXPECT_EQ(src->contexts(), 1);
    EXPECT_EQ(src->context_names(), std::vector<std::string>{"text"});
    const size_t lo = r * bytes.size() / world, hi = (r + 1) * bytes.size() / world;
    for (int64_t step = 0; step < 5; ++step) {
      const Batch b = src->batch(step);
      expect_well_formed(b, 8, seq, 1);
      EXPECT_TRUE(b.mask.all().item<bool>());
      EXPECT_EQ(b.context.sum().item<int64_t>(), 0);
      for (int64_t i = 0; i < 8; ++i) {
        auto row = full_row(b, i);
        std::string window(row.begin(), row.end());
        const size_t at = bytes.find(window);
        ASSERT_NE(at, std::string::npos);
        EXPECT_GE(at, lo) << "rank " << r;
        EXPECT_LE(at + seq + 1, hi) << "rank " << r;
      }
    }
  }
}

TEST_F(TextData, IsAPureFunctionOfStep) {
  std::string bytes;
  for (int i = 0; i < 500; ++i) bytes += fmt::format("line {} of the text\n", i);
  write(bytes);
  auto a = make_text(config(4, 32), path_);
  auto b = make_text(config(4, 32), path_);
  EXPECT_TRUE(same(a->batch(9), b->batch(9)));
  EXPECT_FALSE(same(a->batch(9), a->batch(10)));
  EXPECT_FALSE(same(a->batch(9), make_text(config(4, 32, 0, 1, 99), path_)->batch(9)));
}

TEST_F(TextData, ErrorsNameDataAndThePath) {
  const std::string missing = path_ + ".missing";
  auto msg = error_of<OptionError>([&] { make_text(config(), missing); });
  EXPECT_NE(msg.find("option '--data'"), std::string::npos) << msg;
  EXPECT_NE(msg.find(missing), std::string::npos) << msg;

  write(std::string(40, 'x'));  // 20 bytes per rank on 2 ranks: too small for seq_len 32
  msg = error_of<OptionError>([&] { make_text(config(4, 32, 1, 2), path_); });
  EXPECT_NE(msg.find("option '--data'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("too small for 2 ranks with --seq-len 32"), std::string::npos) << msg;
  EXPECT_NE(msg.find(path_), std::string::npos) << msg;
  EXPECT_NO_THROW(make_text(config(4, 19, 1, 2), path_));  // 20 bytes = seq_len + 1: fits
}

TEST(Data, DecodeShowsSpecials) {
  const int64_t ids[] = {kBos, 'a', '=', kEos, kPad};
  EXPECT_EQ(decode(ids, 5), "<bos>a=<eos><pad>");
}

}  // namespace
}  // namespace trustep::train

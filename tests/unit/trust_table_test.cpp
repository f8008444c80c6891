// The trust table against references written with plain loops: credit + apply_step must
// match a per-token loop bit for bit (fixed point makes that possible), effective trust must
// guard against early priors, and the state must survive safetensors and SQLite.
#include "comm/communicator.h"
#include "core/error.h"
#include "core/safetensors.h"
#include "trust/trust_table.h"
#include "tests/unit/trust_reference.h"

#include <ATen/Context.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>
#include "tests/unit/test_util.h"
#include <sqlite3.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

namespace trustep::trust {
namespace {

using trustep::testing::error_of;
using trustep::testing::make_self;

namespace fs = std::filesystem;
using namespace testref;

TEST(TrustConfig, ValidateNamesTheOption) {
  const auto message = [](const std::function<void(TrustConfig&)>& change) {
    TrustConfig c;
    change(c);
    try {
      c.validate();
    } catch (const OptionError& e) {
      return std::string(e.what());
    }
    return std::string("no OptionError");
  };
  EXPECT_EQ(message([](TrustConfig&) {}), "no OptionError");
  EXPECT_EQ(message([](TrustConfig& c) { c.prior = 1.5; }), "--trust-prior must be in [0, 1], got 1.5");
  EXPECT_EQ(message([](TrustConfig& c) { c.prior = std::nan(""); }), "--trust-prior must be in [0, 1], got nan");
  EXPECT_EQ(message([](TrustConfig& c) { c.min_evidence = -1; }),
            "--trust-min-evidence must be a finite number >= 0, got -1");
  EXPECT_EQ(message([](TrustConfig& c) { c.learning_rate = 0; }), "--trust-lr must be in (0, 1], got 0");
  EXPECT_EQ(message([](TrustConfig& c) { c.learning_rate = 1.01; }), "--trust-lr must be in (0, 1], got 1.01");
  EXPECT_EQ(message([](TrustConfig& c) { c.layers = 0; }), "--layers must be >= 1, got 0");
  EXPECT_EQ(message([](TrustConfig& c) { c.contexts = -3; }), "--contexts must be >= 1, got -3");
  EXPECT_EQ(message([](TrustConfig& c) { c.experts = 0; }), "--experts must be >= 1, got 0");
  EXPECT_EQ(message([](TrustConfig& c) { c.learning_rate = 1; c.prior = 0; }), "no OptionError");
  TrustConfig bad;
  bad.experts = 0;
  EXPECT_THROW((void)TrustTable(bad, c10::kCPU), OptionError);
}

TEST(TrustTable, StartsAtThePriorWithoutEvidence) {
  TrustConfig cfg{.layers = 2, .contexts = 3, .experts = 4, .prior = 0.25};
  TrustTable table(cfg, c10::kCPU);
  EXPECT_EQ(table.trust().sizes(), (c10::IntArrayRef{2, 3, 4}));
  EXPECT_EQ(table.trust().scalar_type(), at::kFloat);
  EXPECT_EQ(table.evidence().scalar_type(), at::kFloat);
  EXPECT_TRUE(table.trust().equal(at::full({2, 3, 4}, 0.25f)));
  EXPECT_TRUE(table.evidence().equal(at::zeros({2, 3, 4})));
  EXPECT_TRUE(table.effective(1).equal(at::full({3, 4}, 0.25f)));
  EXPECT_TRUE(table.evidenced_experts(0).equal(at::zeros({3}, at::kLong)));
}

TEST(TrustTable, EffectiveUsesThePriorBelowMinEvidence) {
  TrustConfig cfg{.layers = 2, .contexts = 2, .experts = 3, .prior = 0.3, .min_evidence = 16};
  TrustTable table(cfg, c10::kCPU);
  const std::vector<float> trust{0.9f, 0.8f, 0.7f, 0.6f, 0.5f, 0.4f, 0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f};
  const std::vector<float> evidence{15, 16, 17, 0, 100, 3, 16, 16, 16, 0, 0, 0};
  table.load_state({{"trust.value", tensor_of(trust, {2, 2, 3}, at::kFloat)},
                    {"trust.evidence", tensor_of(evidence, {2, 2, 3}, at::kFloat)}});
  EXPECT_EQ(values_of<float>(table.effective(0)), (std::vector<float>{0.3f, 0.8f, 0.7f, 0.3f, 0.5f, 0.3f}));
  EXPECT_EQ(values_of<float>(table.effective(1)), (std::vector<float>{0.1f, 0.2f, 0.3f, 0.3f, 0.3f, 0.3f}));
  EXPECT_EQ(values_of<int64_t>(table.evidenced_experts(0)), (std::vector<int64_t>{2, 1}));
  EXPECT_EQ(values_of<int64_t>(table.evidenced_experts(1)), (std::vector<int64_t>{3, 0}));
  EXPECT_NE(error_of([&] { table.effective(2); }).find("TrustTable::effective: layer 2 is outside [0, 2)"),
            std::string::npos);
}

TEST(TrustTable, EmaFormulaExactly) {
  TrustConfig cfg{.layers = 1, .contexts = 2, .experts = 4, .prior = 0.5, .min_evidence = 0, .learning_rate = 0.1};
  TrustTable table(cfg, c10::kCPU);
  auto comm = make_self();
  // ctx 0: expert 1 once with (w 0.5, q 0.75); ctx 1: expert 2 with (0.25, 1) and (0.75, 0), so
  // q̄ = 0.25; expert 3 of ctx 1 only with weight 0: evidence grows, trust does not move.
  Batch b{.layer = 0, .T = 3, .k = 2, .ctx = {0, 1, 1},
          .experts = {1, -1, 2, 3, 2, -1}, .weights = {0.5f, 0.9f, 0.25f, 0.0f, 0.75f, 0.3f},
          .quality = {0.75f, 1.0f, 0.0f}};
  credit(table, b);
  EXPECT_TRUE(table.trust().equal(at::full({1, 2, 4}, 0.5f))) << "credit alone must not change the table";
  table.apply_step(*comm);
  const float t01 = static_cast<float>(0.5 * (1.0 - 0.1) + 0.75 * 0.1);
  const float t12 = static_cast<float>(0.5 * (1.0 - 0.1) + 0.25 * 0.1);
  EXPECT_EQ(values_of<float>(table.trust()), (std::vector<float>{0.5f, t01, 0.5f, 0.5f, 0.5f, 0.5f, t12, 0.5f}));
  EXPECT_EQ(values_of<float>(table.evidence()), (std::vector<float>{0, 1, 0, 0, 0, 0, 2, 1}));
  // Second step on top of the first; an empty step changes nothing.
  credit(table, b);
  table.apply_step(*comm);
  EXPECT_EQ(table.trust()[0][0][1].item<float>(), static_cast<float>(static_cast<double>(t01) * (1.0 - 0.1) + 0.75 * 0.1));
  EXPECT_EQ(table.evidence()[0][1][2].item<float>(), 4.0f);
  const at::Tensor before = table.trust().clone();
  table.apply_step(*comm);
  EXPECT_TRUE(table.trust().equal(before));
}

void check_against_reference(c10::Device device) {
  const TrustConfig cfg{.layers = 3, .contexts = 4, .experts = 6, .prior = 0.5, .min_evidence = 4,
                        .learning_rate = 0.2};
  TrustTable table(cfg, device);
  Reference ref(cfg);
  auto comm = make_self();
  std::mt19937 rng(1234);
  for (int step = 0; step < 25; ++step) {
    const int credits = step % 4;  // 0 to 3 credit calls per step, on random layers
    for (int c = 0; c < credits; ++c) {
      const Batch b = random_batch(rng, cfg, std::uniform_int_distribution<int64_t>(0, 60)(rng), 2 + c % 2);
      credit(table, b, device);
      ref.credit(b);
    }
    table.apply_step(*comm);
    ref.apply();
    ASSERT_EQ(values_of<float>(table.trust()), ref.trust) << "step " << step;
    ASSERT_EQ(values_of<float>(table.evidence()), ref.evidence) << "step " << step;
  }
  // The reference did learn something: trust moved away from the prior in some cells.
  EXPECT_GT(std::count_if(ref.trust.begin(), ref.trust.end(), [](float t) { return t != 0.5f; }), 20);
  EXPECT_NO_THROW(table.check_consistent(*comm));
}

TEST(TrustTable, CreditAndApplyMatchALoopReferenceBitForBit) { check_against_reference(c10::kCPU); }

TEST(TrustTable, CudaMatchesTheSameReferenceBitForBit) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  check_against_reference(c10::Device(c10::kCUDA, 0));
}

TEST(TrustTable, EvidenceAccumulatesAndCountsEvidencedExperts) {
  TrustConfig cfg{.layers = 1, .contexts = 2, .experts = 3, .min_evidence = 5};
  TrustTable table(cfg, c10::kCPU);
  auto comm = make_self();
  // Each step: ctx 0 uses experts 0 and 1 once per token (2 tokens), ctx 1 uses expert 2 once.
  const Batch b{.layer = 0, .T = 3, .k = 2, .ctx = {0, 0, 1}, .experts = {0, 1, 0, 1, 2, -1},
                .weights = {0.5f, 0.5f, 0.5f, 0.5f, 1.0f, 0.0f}, .quality = {1.0f, 0.5f, 0.2f}};
  for (int step = 1; step <= 5; ++step) {
    credit(table, b);
    table.apply_step(*comm);
    EXPECT_EQ(values_of<float>(table.evidence()),
              (std::vector<float>{2.0f * step, 2.0f * step, 0, 0, 0, 1.0f * step}));
    // ctx 0's two experts cross 5 uses at step 3; ctx 1's expert at step 5.
    EXPECT_EQ(values_of<int64_t>(table.evidenced_experts(0)),
              (std::vector<int64_t>{step >= 3 ? 2 : 0, step >= 5 ? 1 : 0}))
        << "step " << step;
  }
}

TEST(TrustTable, InvalidCreditFailsTheStepOnEveryRankAndLeavesTheTable) {
  TrustConfig cfg{.layers = 2, .contexts = 2, .experts = 4};
  TrustTable table(cfg, c10::kCPU);
  auto comm = make_self();
  const Batch b{.layer = 1, .T = 4, .k = 2, .ctx = {0, 5, 1, 1}, .experts = {0, -2, 1, -1, 4, 2, 3, 3},
                .weights = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 1.5f, 0.5f, 0.5f},
                .quality = {0.5f, 0.5f, 0.5f, std::nanf("")}};
  credit(table, b);
  try {
    table.apply_step(*comm);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_TRUE(e.collective());
    const std::string m = e.what();
    EXPECT_NE(m.find("layer 1: 1 slot(s) with a context outside [0, C)"), std::string::npos) << m;
    EXPECT_NE(m.find("layer 1: 2 slot(s) with an expert outside [-1, E)"), std::string::npos) << m;
    EXPECT_NE(m.find("layer 1: 3 slot(s) with a weight or quality outside [0, 1] (or NaN)"), std::string::npos)
        << m;
    EXPECT_NE(m.find("the table is unchanged [raised on every rank]"), std::string::npos) << m;
  }
  EXPECT_TRUE(table.trust().equal(at::full({2, 2, 4}, 0.5f)));
  EXPECT_TRUE(table.evidence().equal(at::zeros({2, 2, 4})));
  // The rejected credit does not linger: the next step is clean.
  EXPECT_NO_THROW(table.apply_step(*comm));
  EXPECT_TRUE(table.evidence().equal(at::zeros({2, 2, 4})));
}

TEST(TrustTable, CreditArgumentErrorsNameTheArgument) {
  TrustTable table(TrustConfig{.layers = 2, .experts = 4}, c10::kCPU);
  const at::Tensor ctx = at::zeros({3}, at::kLong), experts = at::zeros({3, 2}, at::kLong);
  const at::Tensor weights = at::full({3, 2}, 0.5f), quality = at::full({3}, 0.5f);
  EXPECT_NE(error_of([&] { table.credit(2, ctx, experts, weights, quality); })
                .find("TrustTable::credit: layer 2 is outside [0, 2)"),
            std::string::npos);
  EXPECT_NE(error_of([&] { table.credit(0, ctx, experts, weights.to(at::kBFloat16), quality); })
                .find("weights must be [T, k] fp32 on cpu (the table's device), got [3, 2] bf16 on cpu"),
            std::string::npos);
  EXPECT_NE(error_of([&] { table.credit(0, ctx.to(at::kInt), experts, weights, quality); }).find("ctx must be [T] int64"),
            std::string::npos);
  EXPECT_NE(error_of([&] { table.credit(0, ctx, experts, weights, at::full({4}, 0.5f)); })
                .find("shapes disagree: ctx [3], experts [3, 2], weights [3, 2], quality [4]"),
            std::string::npos);
}

TEST(TrustTable, StateRoundTripsThroughSafetensors) {
  TrustConfig cfg{.layers = 2, .contexts = 3, .experts = 4};
  TrustTable table(cfg, c10::kCPU);
  auto comm = make_self();
  std::mt19937 rng(7);
  for (int step = 0; step < 3; ++step) {
    credit(table, random_batch(rng, cfg, 40, 2));
    table.apply_step(*comm);
  }
  const TensorMap state = table.state();
  ASSERT_EQ(state.size(), 2u);
  EXPECT_TRUE(state.at("trust.value").equal(table.trust()));
  EXPECT_TRUE(state.at("trust.evidence").equal(table.evidence()));
  state.at("trust.value").fill_(0.0f);  // a copy: the table is not affected
  EXPECT_FALSE(table.trust().equal(state.at("trust.value")));

  const std::string path = ::testing::TempDir() + "trust_state_" + std::to_string(::getpid()) + ".safetensors";
  save_safetensors(path, table.state(), {{"kind", "trust"}});
  TrustTable restored(cfg, c10::kCPU);
  TensorMap loaded = load_safetensors(path).tensors;
  loaded["unrelated"] = at::zeros({1});  // other checkpoint entries are ignored
  restored.load_state(loaded);
  fs::remove(path);
  EXPECT_EQ(restored.digest(), table.digest());
  EXPECT_TRUE(restored.trust().equal(table.trust()));
}

TEST(TrustTable, LoadStateErrorsNameTheTensor) {
  TrustTable table(TrustConfig{.layers = 2, .contexts = 3, .experts = 8}, c10::kCPU);
  const at::Tensor good = at::full({2, 3, 8}, 0.5f);
  EXPECT_NE(error_of([&] { table.load_state({{"trust.value", good}}); })
                .find("tensor 'trust.evidence' is missing (present: [trust.value])"),
            std::string::npos);
  EXPECT_NE(error_of([&] { table.load_state({{"trust.value", at::full({1, 3, 8}, 0.5f)}, {"trust.evidence", good}}); })
                .find("tensor 'trust.value' has shape [1, 3, 8], expected [layers, contexts, experts] = [2, 3, 8]"),
            std::string::npos);
  EXPECT_NE(error_of([&] { table.load_state({{"trust.value", good}, {"trust.evidence", good.to(at::kDouble)}}); })
                .find("tensor 'trust.evidence' has dtype fp64, expected fp32"),
            std::string::npos);
  EXPECT_NE(error_of([&] { table.load_state({{"trust.value", at::full({2, 3, 8}, 1.5f)}, {"trust.evidence", good}}); })
                .find("'trust.value' holds values outside [0, 1]"),
            std::string::npos);
  EXPECT_NE(error_of([&] { table.load_state({{"trust.value", good}, {"trust.evidence", at::full({2, 3, 8}, -1.0f)}}); })
                .find("'trust.evidence' holds negative"),
            std::string::npos);
}

TEST(TrustTable, DigestFollowsTheContents) {
  TrustConfig cfg{.layers = 1, .contexts = 2, .experts = 3};
  TrustTable a(cfg, c10::kCPU), b(cfg, c10::kCPU);
  EXPECT_EQ(a.digest(), b.digest());
  auto comm = make_self();
  credit(a, Batch{.layer = 0, .T = 1, .k = 1, .ctx = {1}, .experts = {2}, .weights = {1.0f}, .quality = {1.0f}});
  a.apply_step(*comm);
  EXPECT_NE(a.digest(), b.digest());
  TrustConfig other = cfg;
  other.contexts = 3;
  other.experts = 2;  // same number of cells, other shape
  EXPECT_NE(TrustTable(other, c10::kCPU).digest(), b.digest());
}

// ---- token_quality ----

std::vector<float> quality_reference(const std::vector<float>& loss, const std::vector<int64_t>& ctx, int64_t C,
                                     double temperature) {
  std::vector<double> sum(C), count(C);
  for (size_t t = 0; t < loss.size(); ++t) {
    sum[ctx[t]] += loss[t];
    count[ctx[t]] += 1;
  }
  std::vector<float> q;
  for (size_t t = 0; t < loss.size(); ++t)
    q.push_back(static_cast<float>(1.0 / (1.0 + std::exp(-(sum[ctx[t]] / count[ctx[t]] - loss[t]) / temperature))));
  return q;
}

TEST(TrustQuality, MatchesALoopReference) {
  std::mt19937 rng(99);
  std::uniform_real_distribution<float> loss_dist(0.0f, 8.0f);
  const int64_t C = 5, T = 300;
  std::vector<float> loss;
  std::vector<int64_t> ctx;
  for (int64_t t = 0; t < T; ++t) {
    loss.push_back(loss_dist(rng));
    ctx.push_back(std::uniform_int_distribution<int64_t>(0, C - 2)(rng));  // context C-1 stays empty
  }
  auto comm = make_self();
  for (double temperature : {0.5, 2.0}) {
    const std::vector<float> expect = quality_reference(loss, ctx, C, temperature);
    const at::Tensor q = token_quality(tensor_of(loss, {T}, at::kFloat), tensor_of(ctx, {T}, at::kLong), C,
                                       temperature, nullptr);
    ASSERT_EQ(q.scalar_type(), at::kFloat);
    const std::vector<float> got = values_of<float>(q);
    for (int64_t t = 0; t < T; ++t) ASSERT_NEAR(got[t], expect[t], 2e-6) << "token " << t;
    // A world of one gives the same answer as no communicator.
    EXPECT_TRUE(token_quality(tensor_of(loss, {T}, at::kFloat), tensor_of(ctx, {T}, at::kLong), C, temperature,
                              comm.get())
                    .equal(q));
  }
}

TEST(TrustQuality, BetterThanTheContextMeanScoresAboveHalf) {
  // Context 0: losses 1, 3 (mean 2); context 1: a single token scores exactly 0.5.
  const at::Tensor loss = tensor_of(std::vector<float>{1, 3, 10}, {3}, at::kFloat).to(at::kBFloat16);
  const at::Tensor q = token_quality(loss, tensor_of(std::vector<int64_t>{0, 0, 1}, {3}, at::kLong), 2, 1.0, nullptr);
  const std::vector<float> v = values_of<float>(q);
  EXPECT_NEAR(v[0], 1.0 / (1.0 + std::exp(-1.0)), 1e-6);
  EXPECT_NEAR(v[1], 1.0 / (1.0 + std::exp(1.0)), 1e-6);
  EXPECT_EQ(v[2], 0.5f);
  EXPECT_EQ(token_quality(at::zeros({0}), at::zeros({0}, at::kLong), 3, 1.0, nullptr).numel(), 0);
}

TEST(TrustQuality, BadInputsAreNamed) {
  const at::Tensor ctx = at::zeros({2}, at::kLong);
  const at::Tensor loss = at::full({2}, 1.0f);
  try {
    token_quality(loss, ctx, 2, 0.0, nullptr);
    FAIL() << "expected OptionError";
  } catch (const OptionError& e) {
    EXPECT_EQ(std::string(e.what()), "--trust-temperature must be > 0, got 0");
  }
  EXPECT_NE(error_of([&] {
              token_quality(tensor_of(std::vector<float>{1, std::nanf("")}, {2}, at::kFloat), ctx, 2, 1.0, nullptr);
            }).find("1 with a loss that is not finite"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              token_quality(loss, tensor_of(std::vector<int64_t>{0, 2}, {2}, at::kLong), 2, 1.0, nullptr);
            }).find("1 token(s) with a context outside [0, 2)"),
            std::string::npos);
  EXPECT_NE(error_of([&] { token_quality(loss, at::zeros({3}, at::kLong), 2, 1.0, nullptr); })
                .find("ctx must be [T] int64 on loss's device with T = 2"),
            std::string::npos);
  EXPECT_NE(error_of([&] { token_quality(at::zeros({2}, at::kLong), ctx, 2, 1.0, nullptr); })
                .find("loss must be [T] of a floating dtype, got [2] int64"),
            std::string::npos);
}

// ---- reputation store ----

class TrustSqlite : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = ::testing::TempDir() + "trust_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".sqlite";
    fs::remove(path_);
  }
  void TearDown() override { fs::remove(path_); }

  // Runs one statement on the file directly and returns the first column of its first row.
  int64_t query_int(const std::string& sql) const {
    sqlite3* db = nullptr;
    EXPECT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
    sqlite3_stmt* s = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &s, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
    const int64_t v = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int64(s, 0) : -1;
    sqlite3_finalize(s);
    sqlite3_close(db);
    return v;
  }

  static TrustTable trained(const TrustConfig& cfg, unsigned seed) {
    TrustTable table(cfg, c10::kCPU);
    auto comm = make_self();
    std::mt19937 rng(seed);
    for (int step = 0; step < 4; ++step) {
      credit(table, random_batch(rng, cfg, 50, 2));
      table.apply_step(*comm);
    }
    return table;
  }

  std::string path_;
};

TEST_F(TrustSqlite, ExportImportRoundTripWithTwoRunsInOneFile) {
  const TrustConfig cfg{.layers = 2, .contexts = 3, .experts = 4, .prior = 0.4, .min_evidence = 2};
  const TrustTable a = trained(cfg, 1), b = trained(cfg, 2);
  ASSERT_NE(a.digest(), b.digest());
  a.export_sqlite(path_, "run-a");
  b.export_sqlite(path_, "run-b");
  a.export_sqlite(path_, "run-a");  // replaces run-a's rows, does not add to them
  EXPECT_EQ(query_int("SELECT COUNT(*) FROM trust WHERE run = 'run-a'"), 24);
  EXPECT_EQ(query_int("SELECT COUNT(*) FROM trust"), 48);
  EXPECT_EQ(query_int("SELECT COUNT(*) FROM runs"), 2);
  EXPECT_EQ(query_int("SELECT contexts FROM runs WHERE run = 'run-b'"), 3);
  EXPECT_EQ(query_int("SELECT COUNT(*) FROM runs WHERE created LIKE '____-__-__T__:__:__Z'"), 2);

  TrustTable seeded(cfg, c10::kCPU);
  seeded.import_sqlite(path_, "run-b");
  EXPECT_EQ(seeded.digest(), b.digest());
  seeded.import_sqlite(path_, "run-a");
  EXPECT_EQ(seeded.digest(), a.digest());
  EXPECT_TRUE(seeded.trust().equal(a.trust()));
  EXPECT_TRUE(seeded.evidence().equal(a.evidence()));
}

TEST_F(TrustSqlite, ShapeMismatchNamesBothShapes) {
  trained(TrustConfig{.layers = 2, .contexts = 3, .experts = 4}, 3).export_sqlite(path_, "small");
  TrustTable other(TrustConfig{.layers = 2, .contexts = 5, .experts = 4}, c10::kCPU);
  const std::string e = error_of([&] { other.import_sqlite(path_, "small"); });
  EXPECT_NE(e.find("run 'small' has shape [layers, contexts, experts] = [2, 3, 4], but this table is [2, 5, 4]"),
            std::string::npos)
      << e;
  EXPECT_NE(e.find(path_), std::string::npos) << e;
}

TEST_F(TrustSqlite, MissingRunAndMissingFileAreNamed) {
  const TrustConfig cfg{.layers = 1, .contexts = 2, .experts = 4};
  trained(cfg, 4).export_sqlite(path_, "alpha");
  trained(cfg, 5).export_sqlite(path_, "beta");
  TrustTable table(cfg, c10::kCPU);
  const std::string e = error_of([&] { table.import_sqlite(path_, "gamma"); });
  EXPECT_NE(e.find("run 'gamma' does not exist (runs there: [alpha, beta])"), std::string::npos) << e;
  const std::string missing = error_of([&] { table.import_sqlite(path_ + ".absent", "alpha"); });
  EXPECT_NE(missing.find("cannot open SQLite file '" + path_ + ".absent'"), std::string::npos) << missing;
  // The failed imports left the table as it was.
  EXPECT_TRUE(table.trust().equal(at::full({1, 2, 4}, 0.5f)));
}

TEST_F(TrustSqlite, IncompleteRunIsRefused) {
  const TrustConfig cfg{.layers = 1, .contexts = 2, .experts = 4};
  trained(cfg, 6).export_sqlite(path_, "r");
  EXPECT_EQ(query_int("DELETE FROM trust WHERE run = 'r' AND expert = 3 AND context = 1 RETURNING 1"), 1);
  TrustTable table(cfg, c10::kCPU);
  const std::string e = error_of([&] { table.import_sqlite(path_, "r"); });
  EXPECT_NE(e.find("run 'r' has 7 trust rows, expected 8 for shape [1, 2, 4]"), std::string::npos) << e;
}

}  // namespace
}  // namespace trustep::trust

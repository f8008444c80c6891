// Context classifier: classify and update are checked against plain-loop references in fp64,
// exact ties are built deliberately, and the fixed-point update is checked to be independent of
// row order and of how a batch is split (the property the MPI consistency relies on).
#include "routing/context.h"

#include "comm/communicator.h"
#include "core/dtype.h"
#include "core/error.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/randperm.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>
#include "tests/unit/test_util.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace trustep::routing {
namespace {

using trustep::testing::make_self;

using Matrix = std::vector<std::vector<double>>;

at::Generator gen(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

at::Tensor gaussian(int64_t t, int64_t h, uint64_t seed, c10::ScalarType dtype = at::kFloat) {
  return at::randn({t, h}, gen(seed), at::TensorOptions().dtype(at::kFloat)).to(dtype);  // [t, h]
}

Matrix to_matrix(const at::Tensor& t) {  // [R, K] any float dtype -> fp64 rows
  const at::Tensor d = t.to(at::kDouble).contiguous();
  Matrix m(d.size(0), std::vector<double>(d.size(1)));
  const auto a = d.accessor<double, 2>();
  for (int64_t i = 0; i < d.size(0); ++i)
    for (int64_t j = 0; j < d.size(1); ++j) m[i][j] = a[i][j];
  return m;
}

std::vector<int64_t> to_vector(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

std::vector<double> normalised(std::vector<double> v) {
  double s = 0;
  for (double x : v) s += x * x;
  const double n = std::sqrt(s);
  if (n > 0)
    for (double& x : v) x /= n;
  return v;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Cosine scores [C] of one row against the centroids.
std::vector<double> ref_scores(const std::vector<double>& row, const Matrix& centroids) {
  const std::vector<double> u = normalised(row);
  std::vector<double> s;
  for (const auto& c : centroids) s.push_back(dot(u, c));
  return s;
}

// Brute force: normalise, dot, argmax; strict '>' keeps the lowest index on ties.
std::vector<int64_t> ref_classify(const Matrix& hidden, const Matrix& centroids) {
  std::vector<int64_t> out;
  for (const auto& row : hidden) {
    const auto s = ref_scores(row, centroids);
    int64_t best = 0;
    for (size_t c = 1; c < s.size(); ++c)
      if (s[c] > s[best]) best = static_cast<int64_t>(c);
    out.push_back(best);
  }
  return out;
}

// Sculley's spherical mini-batch step in fp64 loops, for the given assignments.
void ref_update(Matrix& centroids, std::vector<int64_t>& counts, const Matrix& hidden,
                const std::vector<int64_t>& assignments) {
  const size_t C = centroids.size(), H = centroids[0].size();
  Matrix sums(C, std::vector<double>(H, 0.0));
  std::vector<int64_t> m(C, 0);
  for (size_t t = 0; t < hidden.size(); ++t) {
    const auto u = normalised(hidden[t]);
    for (size_t j = 0; j < H; ++j) sums[assignments[t]][j] += u[j];
    ++m[assignments[t]];
  }
  for (size_t c = 0; c < C; ++c) {
    if (m[c] == 0) continue;
    counts[c] += m[c];
    const double eta = static_cast<double>(m[c]) / static_cast<double>(counts[c]);
    for (size_t j = 0; j < H; ++j) centroids[c][j] += eta * (sums[c][j] / m[c] - centroids[c][j]);
    centroids[c] = normalised(centroids[c]);
  }
}

void expect_close(const at::Tensor& actual, const Matrix& expected, double tol) {
  const Matrix a = to_matrix(actual);
  ASSERT_EQ(a.size(), expected.size());
  for (size_t i = 0; i < a.size(); ++i)
    for (size_t j = 0; j < a[i].size(); ++j) EXPECT_NEAR(a[i][j], expected[i][j], tol) << "[" << i << ", " << j << "]";
}

ContextConfig config(int64_t contexts, int64_t dim, uint64_t seed = 7) {
  ContextConfig c;
  c.contexts = contexts;
  c.dim = dim;
  c.seed = seed;
  return c;
}

// Replaces the centroids (rows are normalised here) keeping the counts.
void set_centroids(ContextClassifier& k, const at::Tensor& rows) {
  auto s = k.state();
  const at::Tensor r = rows.to(at::kFloat);
  s[kContextCentroidsKey] = r.div(at::linalg_vector_norm(r, 2, {1}, true)).to(k.dtype());
  k.load_state(s);
}

// ---------------------------------------------------------------------------------------------

TEST(ContextConfig, ValidateNamesTheOption) {
  ContextConfig c = config(0, 8);
  try {
    c.validate();
    FAIL() << "no error";
  } catch (const OptionError& e) {
    EXPECT_NE(std::string(e.what()).find("--contexts"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'0'"), std::string::npos) << e.what();
  }
  c = config(4, 0);
  try {
    c.validate();
    FAIL() << "no error";
  } catch (const OptionError& e) {
    EXPECT_NE(std::string(e.what()).find("--hidden"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ContextClassifier(config(-3, 8), at::kCPU, at::kFloat), OptionError);
  EXPECT_NO_THROW(config(1, 1).validate());
  try {
    ContextClassifier(config(2, 8), at::kCPU, at::kInt);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("int32"), std::string::npos) << e.what();
  }
}

TEST(ContextClassifier, InitialCentroidsAreSeededUnitRowsIdenticalAcrossDtypes) {
  const ContextClassifier a(config(5, 12, 3), at::kCPU, at::kFloat);
  const ContextClassifier b(config(5, 12, 3), at::kCPU, at::kFloat);
  const ContextClassifier other(config(5, 12, 4), at::kCPU, at::kFloat);
  const ContextClassifier half(config(5, 12, 3), at::kCPU, at::kBFloat16);
  EXPECT_EQ(a.centroids().sizes(), (c10::IntArrayRef{5, 12}));
  EXPECT_EQ(a.centroids().scalar_type(), at::kFloat);
  EXPECT_TRUE(a.centroids().equal(b.centroids()));
  EXPECT_EQ(a.digest(), b.digest());
  EXPECT_FALSE(a.centroids().equal(other.centroids()));
  EXPECT_NE(a.digest(), other.digest());
  EXPECT_EQ(half.centroids().scalar_type(), at::kBFloat16);
  EXPECT_TRUE(half.centroids().equal(a.centroids().to(at::kBFloat16)));
  const at::Tensor norms = at::linalg_vector_norm(a.centroids(), 2, {1});  // [C]
  EXPECT_TRUE(norms.sub(1).abs().max().item<double>() < 1e-6);
  EXPECT_TRUE(a.counts().equal(at::zeros({5}, at::kLong)));
}

TEST(ContextClassifier, ClassifyMatchesBruteForceReference) {
  const ContextClassifier k(config(7, 24), at::kCPU, at::kFloat);
  const at::Tensor hidden = gaussian(257, 24, 11).mul(3.0);  // [T, H], norms far from 1
  const at::Tensor ctx = k.classify(hidden);                  // [T]
  EXPECT_EQ(ctx.scalar_type(), at::kLong);
  EXPECT_EQ(ctx.sizes(), (c10::IntArrayRef{257}));
  const auto expected = ref_classify(to_matrix(hidden), to_matrix(k.centroids()));
  EXPECT_EQ(to_vector(ctx), expected);
  // Not a constant answer: the reference uses several contexts.
  EXPECT_GE(std::set<int64_t>(expected.begin(), expected.end()).size(), 5u);
}

TEST(ContextClassifier, ExactTiesGoToTheLowestIndex) {
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf, at::kDouble}) {
    SCOPED_TRACE(dtype_name(dtype));
    ContextClassifier k(config(4, 3), at::kCPU, dtype);
    // Centroids e0, e1, e1 (a duplicate), e2: every tie below is exact in any arithmetic.
    set_centroids(k, at::tensor({1.0f, 0.f, 0.f, 0.f, 1.f, 0.f, 0.f, 1.f, 0.f, 0.f, 0.f, 1.f}).view({4, 3}));
    const at::Tensor q = at::tensor({0.f, 2.f, 0.f,     // e1 == duplicate -> 1
                                     3.f, 3.f, 0.f,     // e0 == e1 == dup -> 0
                                     0.f, 1.f, 1.f,     // e1 == dup == e2 -> 1
                                     0.f, 0.f, 0.f,     // zero row: all tie -> 0
                                     0.f, 0.f, 5.f,     // plain e2 -> 3
                                     -1.f, -1.f, -1.f}  // all negative and equal -> 0
                                    ).view({6, 3}).to(dtype);  // [T, H]
    EXPECT_EQ(to_vector(k.classify(q)), (std::vector<int64_t>{1, 0, 1, 0, 3, 0}));
    EXPECT_EQ(to_vector(k.classify(q)), ref_classify(to_matrix(q), to_matrix(k.centroids())));
  }
}

TEST(ContextClassifier, EmptyBatchIsNormal) {
  ContextClassifier k(config(3, 8), at::kCPU, at::kFloat);
  const at::Tensor ctx = k.classify(at::zeros({0, 8}, at::kFloat));
  EXPECT_EQ(ctx.sizes(), (c10::IntArrayRef{0}));
  EXPECT_EQ(ctx.scalar_type(), at::kLong);
  auto self = make_self();
  const at::Tensor before = k.centroids().clone();
  const at::Tensor assigned = k.update(at::zeros({0, 8}, at::kFloat), *self);
  EXPECT_EQ(assigned.sizes(), (c10::IntArrayRef{0}));
  EXPECT_TRUE(k.centroids().equal(before));
  EXPECT_TRUE(k.counts().equal(at::zeros({3}, at::kLong)));
}

TEST(ContextClassifier, WrongWidthNamesBothSizes) {
  const ContextClassifier k(config(3, 16), at::kCPU, at::kFloat);
  try {
    k.classify(at::zeros({4, 8}, at::kFloat));
    FAIL() << "no error";
  } catch (const ContractViolation&) {
    FAIL() << "a width mismatch is not a dtype contract violation";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("8 columns"), std::string::npos) << what;
    EXPECT_NE(what.find("--hidden"), std::string::npos) << what;
    EXPECT_NE(what.find("is 16"), std::string::npos) << what;
    EXPECT_NE(what.find("context.query"), std::string::npos) << what;
    EXPECT_FALSE(e.collective());
  }
}

TEST(ContextClassifier, StrictPolicyRejectsWrongDtypeAndNdim) {
  const ContextClassifier k(config(3, 8), at::kCPU, at::kFloat, ContractPolicy::kStrict, /*rank=*/2);
  try {
    k.classify(at::zeros({4, 8}, at::kBFloat16));
    FAIL() << "no error";
  } catch (const ContractViolation& e) {
    EXPECT_EQ(e.boundary(), "context.query");
    EXPECT_EQ(e.expected(), "fp32");
    EXPECT_EQ(e.actual(), "bf16");
    EXPECT_EQ(e.rank(), 2);
    EXPECT_NE(std::string(e.what()).find("rank 2"), std::string::npos) << e.what();
  }
  try {
    k.classify(at::zeros({2, 4, 8}, at::kFloat));
    FAIL() << "no error";
  } catch (const ContractViolation& e) {
    EXPECT_EQ(e.expected(), "ndim 2");
    EXPECT_EQ(e.actual(), "ndim 3");
  }
  EXPECT_EQ(k.contracts().total_casts(), 0);
}

TEST(ContextClassifier, CastPolicyCastsOnceAndCounts) {
  const ContextClassifier k(config(5, 16), at::kCPU, at::kFloat, ContractPolicy::kCast);
  const at::Tensor q = gaussian(40, 16, 5, at::kBFloat16);  // [T, H] bf16
  const at::Tensor ctx = k.classify(q);
  EXPECT_TRUE(ctx.equal(k.classify(q.to(at::kFloat))));
  EXPECT_EQ(k.contracts().casts("context.query"), 1);
  k.classify(q);
  EXPECT_EQ(k.contracts().casts("context.query"), 2);
  // A width mismatch is still an error under cast.
  EXPECT_THROW(k.classify(at::zeros({4, 8}, at::kFloat)), Error);
  // Non-contiguous queries are fine without a cast.
  k.classify(gaussian(16, 40, 6).t());
  EXPECT_EQ(k.contracts().casts("context.query"), 2);
}

TEST(ContextUpdate, MatchesLoopReferenceOverSeveralBatches) {
  ContextClassifier k(config(5, 12), at::kCPU, at::kFloat);
  auto self = make_self();
  Matrix centroids = to_matrix(k.centroids());
  std::vector<int64_t> counts(5, 0);
  for (int step = 0; step < 6; ++step) {
    const at::Tensor batch = gaussian(20 + 17 * step, 12, 100 + step).mul(0.5 + step);  // [T, H]
    const Matrix rows = to_matrix(batch);
    const auto expected = ref_classify(rows, centroids);
    const at::Tensor assigned = k.update(batch, *self);
    ASSERT_EQ(to_vector(assigned), expected) << "step " << step;
    ref_update(centroids, counts, rows, expected);
    EXPECT_EQ(to_vector(k.counts()), counts) << "step " << step;
    expect_close(k.centroids(), centroids, 2e-6);
  }
  EXPECT_EQ(k.centroids().scalar_type(), at::kFloat);
  // Something moved: the last centroids are not the initial ones.
  EXPECT_FALSE(k.centroids().equal(ContextClassifier(config(5, 12), at::kCPU, at::kFloat).centroids()));
}

TEST(ContextUpdate, FirstUpdateMovesACentroidToItsMean) {
  // n = 0 before the first update, so the rate m/n is 1 and the centroid becomes the normalised mean.
  ContextClassifier k(config(2, 2), at::kCPU, at::kFloat);
  set_centroids(k, at::tensor({1.f, 0.f, -1.f, 0.f}).view({2, 2}));
  auto self = make_self();
  k.update(at::tensor({2.f, 1.f, 3.f, -1.f, 1.f, 0.f}).view({3, 2}), *self);  // all three -> context 0
  const double a = 2 / std::sqrt(5.0) + 3 / std::sqrt(10.0) + 1, b = 1 / std::sqrt(5.0) - 1 / std::sqrt(10.0);
  const auto expected = normalised({a / 3, b / 3});
  expect_close(k.centroids().narrow(0, 0, 1), Matrix{expected}, 1e-6);
  EXPECT_EQ(to_vector(k.counts()), (std::vector<int64_t>{3, 0}));
}

TEST(ContextUpdate, EmptyClustersKeepTheirCentroid) {
  ContextClassifier k(config(4, 6), at::kCPU, at::kFloat);
  auto self = make_self();
  // Data near +e0 and +e1 only; centroids 2 (-e0) and 3 (-e1) never win.
  at::Tensor c = at::zeros({4, 6}, at::kFloat);
  c[0][0] = 1;
  c[1][1] = 1;
  c[2][0] = -1;
  c[3][1] = -1;
  c = c.add(gaussian(4, 6, 9).mul(0.1));
  set_centroids(k, c);
  const at::Tensor before = k.centroids().clone();
  for (int step = 0; step < 3; ++step) {
    at::Tensor batch = gaussian(30, 6, 50 + step).mul(0.05);  // [T, H]
    batch.narrow(0, 0, 15).select(1, 0).add_(1.0);
    batch.narrow(0, 15, 15).select(1, 1).add_(1.0);
    k.update(batch, *self);
  }
  EXPECT_TRUE(k.centroids().narrow(0, 2, 2).equal(before.narrow(0, 2, 2)));  // bit for bit
  EXPECT_FALSE(k.centroids().narrow(0, 0, 1).equal(before.narrow(0, 0, 1)));
  EXPECT_EQ(to_vector(k.counts()), (std::vector<int64_t>{45, 45, 0, 0}));
}

TEST(ContextUpdate, FixedPointSumsIgnoreRowOrderAndBatchSplits) {
  // The MPI reduction is exact only if the outcome depends on the multiset of rows, not on
  // their order or on which rank (call) held them.
  const at::Tensor batch = gaussian(96, 10, 21);  // [T, H]
  auto self = make_self();
  ContextClassifier whole(config(4, 10), at::kCPU, at::kFloat);
  ContextClassifier shuffled(config(4, 10), at::kCPU, at::kFloat);
  ContextClassifier split(config(4, 10), at::kCPU, at::kFloat);
  for (int step = 0; step < 3; ++step) {
    const at::Tensor b = batch.mul(step + 1).add(gaussian(96, 10, 30 + step).mul(0.3));
    const at::Tensor perm = at::randperm(96, gen(40 + step), at::TensorOptions().dtype(at::kLong));
    whole.update(b, *self);
    shuffled.update(b.index_select(0, perm), *self);
    at::Tensor sums = at::zeros({4, 10}, at::kLong), counts = at::zeros({4}, at::kLong);
    split.accumulate(b.narrow(0, 0, 13), sums, counts);
    split.accumulate(b.narrow(0, 13, 0), sums, counts);
    split.accumulate(b.narrow(0, 13, 83), sums, counts);
    split.apply(sums, counts);
  }
  EXPECT_TRUE(whole.centroids().equal(shuffled.centroids()));
  EXPECT_TRUE(whole.centroids().equal(split.centroids()));
  EXPECT_TRUE(whole.counts().equal(split.counts()));
  EXPECT_EQ(whole.digest(), split.digest());
  EXPECT_EQ(whole.counts().sum().item<int64_t>(), 3 * 96);
}

TEST(ContextUpdate, RecoversWellSeparatedClusters) {
  // 4 random unit directions + noise. Random initial centroids can merge clusters (k-means
  // from a random start is not guaranteed to separate them), so the start is one noisy sample
  // of each cluster: the test is about the update pulling centroids onto the cluster means.
  const int64_t K = 4, H = 32, per = 64;
  const at::Tensor dirs = gaussian(K, H, 77);
  const at::Tensor unit = dirs.div(at::linalg_vector_norm(dirs, 2, {1}, true));  // [K, H]
  const auto sample = [&](uint64_t seed) {  // [K*per, H], cluster k in rows k*per..
    return unit.repeat_interleave(per, 0).add(gaussian(K * per, H, seed).mul(0.08));
  };
  ContextClassifier k(config(K, H), at::kCPU, at::kFloat);
  at::Tensor start = unit.add(gaussian(K, H, 78).mul(0.2));  // cos to its direction ~0.6
  set_centroids(k, start.index_select(0, at::tensor({2L, 0L, 3L, 1L})));  // contexts permuted
  auto self = make_self();
  const at::Tensor start_cos = k.centroids().mm(unit.t());  // [C, K]
  for (int step = 0; step < 4; ++step) k.update(sample(200 + step), *self);

  const auto ctx = to_vector(k.classify(sample(999)));
  std::set<int64_t> used;
  int64_t pure = 0;
  for (int64_t c = 0; c < K; ++c) {
    std::map<int64_t, int64_t> hits;
    for (int64_t i = 0; i < per; ++i) ++hits[ctx[c * per + i]];
    auto best = std::max_element(hits.begin(), hits.end(), [](auto& a, auto& b) { return a.second < b.second; });
    pure += best->second;
    used.insert(best->first);
  }
  EXPECT_EQ(used.size(), static_cast<size_t>(K)) << "two clusters share a context";
  EXPECT_GT(static_cast<double>(pure) / (K * per), 0.95);
  // Each centroid now points at its cluster, much closer than at the start.
  const at::Tensor cos = k.centroids().mm(unit.t());  // [C, K]
  EXPECT_GT(cos.amax(1).min().item<double>(), 0.99);
  EXPECT_LT(start_cos.amax(1).max().item<double>(), 0.95);
}

TEST(ContextUpdate, BadBatchIsACollectiveErrorAndChangesNothing) {
  ContextClassifier k(config(3, 8), at::kCPU, at::kFloat);
  auto self = make_self();
  const uint64_t before = k.digest();
  try {
    k.update(at::zeros({4, 6}, at::kFloat), *self);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_TRUE(e.collective());
    EXPECT_NE(std::string(e.what()).find("6 columns"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("rank 0"), std::string::npos) << e.what();
  }
  try {
    k.update(gaussian(4, 8, 1, at::kHalf), *self);
    FAIL() << "no error";
  } catch (const ContractViolation& e) {
    EXPECT_TRUE(e.collective());
    EXPECT_EQ(e.boundary(), "context.query");
    EXPECT_EQ(e.expected(), "fp32");
    EXPECT_EQ(e.actual(), "fp16");
    EXPECT_EQ(e.rank(), 0);
    EXPECT_NE(std::string(e.what()).find("[raised on every rank]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(k.update(at::Tensor(), *self), ContractViolation);
  EXPECT_EQ(k.digest(), before);
  // Under cast the same batch is converted once and the update goes through.
  ContextClassifier cast(config(3, 8), at::kCPU, at::kFloat, ContractPolicy::kCast);
  cast.update(gaussian(4, 8, 1, at::kHalf), *self);
  EXPECT_EQ(cast.contracts().casts("context.query"), 1);
  EXPECT_EQ(cast.counts().sum().item<int64_t>(), 4);
}

TEST(ContextUpdate, NonFiniteRowsAreRefusedWithoutChangingAnything) {
  ContextClassifier k(config(3, 8), at::kCPU, at::kFloat);
  auto self = make_self();
  k.update(gaussian(10, 8, 3), *self);
  const uint64_t before = k.digest();
  at::Tensor batch = gaussian(6, 8, 4);  // [T, H]
  batch[1][3] = std::nan("");
  batch[4][0] = std::numeric_limits<float>::infinity();
  try {
    k.update(batch, *self);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_TRUE(e.collective());
    EXPECT_NE(std::string(e.what()).find("2 hidden rows of rank 0"), std::string::npos) << e.what();
  }
  EXPECT_EQ(k.digest(), before);
  // accumulate refuses locally and leaves the caller's totals as they were.
  at::Tensor sums = at::zeros({3, 8}, at::kLong), counts = at::zeros({3}, at::kLong);
  k.accumulate(gaussian(5, 8, 5), sums, counts);
  const at::Tensor sums_before = sums.clone(), counts_before = counts.clone();
  EXPECT_THROW(k.accumulate(batch, sums, counts), Error);
  EXPECT_TRUE(sums.equal(sums_before));
  EXPECT_TRUE(counts.equal(counts_before));
  // classify (hot path) does not look: it still answers for every row.
  EXPECT_EQ(k.classify(batch).size(0), 6);
}

TEST(ContextUpdate, ApplyChecksItsArguments) {
  ContextClassifier k(config(3, 4), at::kCPU, at::kFloat);
  EXPECT_THROW(k.apply(at::zeros({3, 5}, at::kLong), at::zeros({3}, at::kLong)), Error);
  EXPECT_THROW(k.apply(at::zeros({3, 4}, at::kLong), at::zeros({3}, at::kInt)), Error);
  EXPECT_THROW(k.apply(at::zeros({3, 4}, at::kLong), at::full({3}, -1, at::kLong)), Error);
  try {
    k.apply(at::zeros({3, 4}, at::kLong), at::full({3}, kMaxTokensPerContext + 1, at::kLong));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fixed-point bound"), std::string::npos) << e.what();
  }
  at::Tensor sums = at::zeros({3, 4}, at::kLong), short_counts = at::zeros({2}, at::kLong);
  EXPECT_THROW(k.accumulate(at::zeros({2, 4}, at::kFloat), sums, short_counts), Error);
}

TEST(ContextState, RoundTripRestoresExactly) {
  ContextClassifier k(config(4, 8, 1), at::kCPU, at::kBFloat16);
  auto self = make_self();
  for (int step = 0; step < 3; ++step) k.update(gaussian(25, 8, 60 + step, at::kBFloat16), *self);
  auto s = k.state();
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s.at("context.centroids").scalar_type(), at::kBFloat16);
  EXPECT_EQ(s.at("context.counts").scalar_type(), at::kLong);
  EXPECT_TRUE(s.at("context.centroids").device().is_cpu());
  ContextClassifier restored(config(4, 8, 99), at::kCPU, at::kBFloat16);
  EXPECT_NE(restored.digest(), k.digest());
  s["trust.table"] = at::zeros({1});  // another module's entry is ignored
  restored.load_state(s);
  EXPECT_TRUE(restored.centroids().equal(k.centroids()));
  EXPECT_TRUE(restored.counts().equal(k.counts()));
  EXPECT_EQ(restored.digest(), k.digest());
  // state() hands out copies.
  s.at("context.counts").fill_(123);
  EXPECT_TRUE(restored.counts().equal(k.counts()));
  EXPECT_TRUE(k.state().at("context.counts").equal(k.counts()));
  // Continuing from the restored state is the same as not stopping.
  const at::Tensor next = gaussian(25, 8, 70, at::kBFloat16);
  k.update(next, *self);
  restored.update(next, *self);
  EXPECT_EQ(restored.digest(), k.digest());
}

TEST(ContextState, LoadStateErrorsNameTheEntryAndChangeNothing) {
  ContextClassifier k(config(3, 4), at::kCPU, at::kFloat);
  const uint64_t before = k.digest();
  const auto good = k.state();
  const auto expect_error = [&](std::map<std::string, at::Tensor> s, const std::string& needle) {
    try {
      k.load_state(s);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("load_state"), std::string::npos) << e.what();
    }
    EXPECT_EQ(k.digest(), before);
  };
  auto s = good;
  s.erase("context.counts");
  expect_error(s, "missing entry 'context.counts'");
  s = good;
  s["context.centroid"] = good.at("context.centroids");
  expect_error(s, "unknown entry 'context.centroid'");
  s = good;
  s["context.centroids"] = at::zeros({3, 5}, at::kFloat);
  expect_error(s, "shape [3, 5], expected [3, 4]");
  s = good;
  s["context.centroids"] = good.at("context.centroids").to(at::kBFloat16);
  expect_error(s, "dtype bf16, expected the classifier's dtype fp32");
  s = good;
  s["context.counts"] = at::zeros({3}, at::kInt);
  expect_error(s, "dtype int32, expected int64");
  s = good;
  s["context.counts"] = at::full({3}, -2, at::kLong);
  expect_error(s, "negative");
  s = good;
  s["context.centroids"] = good.at("context.centroids").mul(2);
  expect_error(s, "not unit vectors");
  s = good;
  s["context.centroids"] = good.at("context.centroids").clone();
  s["context.centroids"][1][2] = std::nan("");
  expect_error(s, "non-finite");
  k.load_state(good);
  EXPECT_EQ(k.digest(), before);
}

TEST(ContextClassifier, Bf16ClassifierPicksANearBestCentroidAndStaysUnit) {
  ContextClassifier k(config(6, 32, 5), at::kCPU, at::kBFloat16);
  auto self = make_self();
  const at::Tensor q = gaussian(300, 32, 8, at::kBFloat16);  // [T, H]
  const auto ctx = to_vector(k.classify(q));
  const Matrix rows = to_matrix(q), cents = to_matrix(k.centroids());
  // Scores are rounded to bf16, so near-ties may resolve either way; the choice must be within
  // bf16 rounding of the best cosine, and exact on most rows.
  const auto expected = ref_classify(rows, cents);
  int64_t same = 0;
  for (size_t t = 0; t < rows.size(); ++t) {
    const auto s = ref_scores(rows[t], cents);
    EXPECT_GE(s[ctx[t]], s[expected[t]] - 0.02) << "row " << t;
    same += ctx[t] == expected[t];
  }
  EXPECT_GT(same, 280);
  for (int step = 0; step < 3; ++step) k.update(gaussian(50, 32, 80 + step, at::kBFloat16), *self);
  EXPECT_EQ(k.centroids().scalar_type(), at::kBFloat16);
  const at::Tensor norms = at::linalg_vector_norm(k.centroids().to(at::kFloat), 2, {1});
  EXPECT_LT(norms.sub(1).abs().max().item<double>(), 1e-2);
  EXPECT_EQ(k.counts().sum().item<int64_t>(), 150);
  k.check_consistent(*self);
}

}  // namespace
}  // namespace trustep::routing

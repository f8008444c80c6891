// Every selector rule against an independent reference written here with plain loops over
// tokens (docs/routing.md states the rules). Inputs are quantised to multiples of 1/16 so that
// exact ties are common and float arithmetic is exact where the rules compare scores.
#include "core/error.h"
#include "routing/selector.h"

#include <ATen/Context.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/rand.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

namespace trustep::routing {
namespace {

using Matrix = std::vector<std::vector<float>>;

struct Case {
  int64_t T = 0, E = 0;
  Matrix probs, trust;
  std::vector<bool> trusted;
  std::vector<float> bias;              // empty: none
  std::vector<bool> available;          // empty: all
  std::vector<int64_t> cluster;         // empty: none
};

struct Ref {
  std::vector<std::vector<int64_t>> experts;
  Matrix weights;
  std::vector<int64_t> load;
  int64_t substituted = 0, unfilled = 0, dropped = 0, rerouted = 0;
};

Case random_case(std::mt19937& rng, int64_t T, int64_t E, bool with_avail, bool with_cluster, bool with_bias) {
  Case c;
  c.T = T;
  c.E = E;
  std::uniform_int_distribution<int> q(0, 16);
  c.probs.assign(T, std::vector<float>(E));
  c.trust.assign(T, std::vector<float>(E));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) {
      c.probs[t][e] = q(rng) / 16.0f;  // not normalised: the rules never assume it
      c.trust[t][e] = q(rng) / 16.0f;
    }
  for (int64_t t = 0; t < T; ++t) c.trusted.push_back(rng() % 3 != 0);
  if (with_bias)
    for (int64_t e = 0; e < E; ++e) c.bias.push_back((static_cast<int>(rng() % 5) - 2) / 16.0f);
  if (with_avail)
    for (int64_t e = 0; e < E; ++e) c.available.push_back(rng() % 3 != 0);
  if (with_cluster)
    for (int64_t e = 0; e < E; ++e) c.cluster.push_back(e % 3);
  return c;
}

at::Tensor matrix(const Matrix& m, int64_t cols) {
  std::vector<float> flat;
  for (const auto& row : m) flat.insert(flat.end(), row.begin(), row.end());
  return at::from_blob(flat.data(), {static_cast<int64_t>(m.size()), cols}, at::kFloat).clone();
}

SelectorInputs inputs(const Case& c) {
  SelectorInputs in;
  in.probs = matrix(c.probs, c.E);
  in.trust = matrix(c.trust, c.E);
  std::vector<uint8_t> tr(c.trusted.begin(), c.trusted.end());
  in.trusted = at::from_blob(tr.data(), {c.T}, at::kByte).to(at::kBool);
  if (!c.bias.empty()) in.bias = at::from_blob(const_cast<float*>(c.bias.data()), {c.E}, at::kFloat).clone();
  if (!c.available.empty()) {
    std::vector<uint8_t> av(c.available.begin(), c.available.end());
    in.available = at::from_blob(av.data(), {c.E}, at::kByte).to(at::kBool);
  }
  if (!c.cluster.empty())
    in.cluster = at::from_blob(const_cast<int64_t*>(c.cluster.data()), {c.E}, at::kLong).clone();
  return in;
}

// ---- the reference: plain loops, one token at a time -------------------------------------
Ref reference(const SelectorConfig& cfg, const Case& c, const std::vector<bool>& explore) {
  const int64_t T = c.T, E = c.E, k = cfg.top_k;
  auto avail = [&](int64_t e) { return c.available.empty() || c.available[e]; };
  Matrix score(T, std::vector<float>(E));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) {
      const float router = c.probs[t][e] + (c.bias.empty() ? 0.0f : c.bias[e]);
      const float a = static_cast<float>(cfg.alpha), b = static_cast<float>(1.0 - cfg.alpha);
      if (cfg.mode == SelectorMode::kRouter) score[t][e] = router;
      if (cfg.mode == SelectorMode::kBlend) score[t][e] = router * a + c.trust[t][e] * b;
      if (cfg.mode == SelectorMode::kTrustFirst)
        score[t][e] = (c.trusted[t] && !explore[t]) ? c.trust[t][e] : router;
    }
  auto order_of = [&](int64_t t) {  // experts by score desc, lower index first on ties
    std::vector<int64_t> o(E);
    std::iota(o.begin(), o.end(), 0);
    std::stable_sort(o.begin(), o.end(), [&](int64_t x, int64_t y) { return score[t][x] > score[t][y]; });
    return o;
  };
  Ref r;
  r.experts.assign(T, std::vector<int64_t>(k));
  for (int64_t t = 0; t < T; ++t) {
    const auto o = order_of(t);
    std::vector<int64_t> ideal(o.begin(), o.begin() + k);
    std::vector<bool> taken(E, false);
    for (auto e : ideal) taken[e] = avail(e);
    for (int64_t j = 0; j < k; ++j) {
      r.experts[t][j] = ideal[j];
      if (avail(ideal[j])) continue;
      int64_t best = -1;
      for (auto e : o) {  // best by score among eligible substitutes
        if (!avail(e) || taken[e]) continue;
        if (!c.cluster.empty() && c.cluster[e] != c.cluster[ideal[j]]) continue;
        if (cfg.substitute_min_trust > 0 && !(c.trust[t][e] >= cfg.substitute_min_trust)) continue;
        best = e;
        break;
      }
      r.experts[t][j] = best;
      if (best >= 0) {
        taken[best] = true;
        ++r.substituted;
      } else {
        ++r.unfilled;
      }
    }
  }

  if (cfg.overflow != OverflowPolicy::kDropless && T > 0) {
    const int64_t C = static_cast<int64_t>(std::ceil(cfg.capacity_factor * static_cast<double>(T * k) / E));
    const int64_t N = T * k;
    std::vector<int64_t> cur(N);
    for (int64_t n = 0; n < N; ++n) cur[n] = r.experts[n / k][n % k];
    std::vector<bool> valid(N), kept(N, false), pending(N), moved(N, false);
    for (int64_t n = 0; n < N; ++n) valid[n] = pending[n] = cur[n] >= 0;
    auto slot_score = [&](int64_t n) { return score[n / k][cur[n]]; };
    auto accept_best = [&](const std::vector<bool>& among, const std::vector<int64_t>& room) {
      std::vector<bool> accepted(N, false);
      for (int64_t e = 0; e < E; ++e) {
        std::vector<int64_t> slots;
        for (int64_t n = 0; n < N; ++n)
          if (among[n] && cur[n] == e) slots.push_back(n);
        std::stable_sort(slots.begin(), slots.end(),
                         [&](int64_t x, int64_t y) { return slot_score(x) > slot_score(y); });
        for (int64_t i = 0; i < static_cast<int64_t>(slots.size()) && i < room[e]; ++i) accepted[slots[i]] = true;
      }
      return accepted;
    };
    if (cfg.overflow == OverflowPolicy::kDrop) {
      kept = accept_best(valid, std::vector<int64_t>(E, C));
    } else {
      for (int64_t round = 0; round <= E && std::count(pending.begin(), pending.end(), true) > 0; ++round) {
        std::vector<int64_t> room(E, C);
        for (int64_t n = 0; n < N; ++n)
          if (kept[n]) --room[cur[n]];
        const auto accepted = accept_best(pending, room);
        std::vector<bool> rejected(N);
        for (int64_t n = 0; n < N; ++n) {
          if (accepted[n]) kept[n] = true;
          rejected[n] = pending[n] && !accepted[n];
          pending[n] = false;
        }
        std::vector<bool> has_room(E);
        std::vector<int64_t> load(E, 0);
        for (int64_t n = 0; n < N; ++n)
          if (kept[n]) ++load[cur[n]];
        for (int64_t e = 0; e < E; ++e) has_room[e] = load[e] < C;
        for (int64_t j = 0; j < k; ++j)
          for (int64_t t = 0; t < T; ++t) {
            const int64_t n = t * k + j;
            if (!rejected[n]) continue;
            std::vector<bool> used(E, false);
            for (int64_t m = t * k; m < t * k + k; ++m)
              if (cur[m] >= 0) used[cur[m]] = true;
            int64_t next = -1;
            for (auto e : order_of(t))
              if (avail(e) && has_room[e] && !used[e]) {
                next = e;
                break;
              }
            cur[n] = next;
            pending[n] = next >= 0;
            if (next >= 0) moved[n] = true;
          }
      }
    }
    for (int64_t n = 0; n < N; ++n) {
      if (valid[n] && !kept[n]) ++r.dropped;
      if (kept[n] && moved[n]) ++r.rerouted;
      r.experts[n / k][n % k] = kept[n] ? cur[n] : -1;
    }
  }

  r.load.assign(E, 0);
  r.weights.assign(T, std::vector<float>(k, 0.0f));
  for (int64_t t = 0; t < T; ++t) {
    float total = 0;
    for (auto e : r.experts[t])
      if (e >= 0) total += c.probs[t][e];
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = r.experts[t][j];
      if (e < 0) continue;
      ++r.load[e];
      r.weights[t][j] = k == 1 ? c.probs[t][e] : total > 0 ? c.probs[t][e] / total : 0.0f;
    }
  }
  return r;
}

void expect_matches(const Selection& s, const Ref& r, const std::string& what) {
  const int64_t T = static_cast<int64_t>(r.experts.size());
  ASSERT_EQ(s.experts.size(0), T) << what;
  const int64_t k = s.experts.size(1);
  auto ex = s.experts.accessor<int64_t, 2>();
  const at::Tensor w = s.weights.detach();
  auto wa = w.accessor<float, 2>();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < k; ++j) {
      ASSERT_EQ(ex[t][j], r.experts[t][j]) << what << ": token " << t << " slot " << j;
      ASSERT_NEAR(wa[t][j], r.weights[t][j], 1e-6) << what << ": token " << t << " slot " << j;
    }
  auto load = s.counts.load.accessor<int64_t, 1>();
  for (size_t e = 0; e < r.load.size(); ++e) ASSERT_EQ(load[e], r.load[e]) << what << ": load of expert " << e;
  EXPECT_EQ(s.counts.substituted.item<int64_t>(), r.substituted) << what;
  EXPECT_EQ(s.counts.unfilled.item<int64_t>(), r.unfilled) << what;
  EXPECT_EQ(s.counts.dropped.item<int64_t>(), r.dropped) << what;
  EXPECT_EQ(s.counts.rerouted.item<int64_t>(), r.rerouted) << what;
}

void expect_distinct(const Selection& s) {
  auto ex = s.experts.accessor<int64_t, 2>();
  for (int64_t t = 0; t < s.experts.size(0); ++t)
    for (int64_t i = 0; i < s.experts.size(1); ++i)
      for (int64_t j = i + 1; j < s.experts.size(1); ++j)
        if (ex[t][i] >= 0) ASSERT_NE(ex[t][i], ex[t][j]) << "token " << t << " has expert " << ex[t][i] << " twice";
}

// Runs both implementations against the reference for one configuration.
void check(const SelectorConfig& cfg, const Case& c, const std::string& what) {
  const std::vector<bool> no_explore(c.T, false);
  const Ref r = reference(cfg, c, no_explore);
  for (auto impl : {SelectorImpl::kTorchOps, SelectorImpl::kFused}) {
    Selector selector(cfg, c10::Device(c10::kCPU));
    const Selection s = selector.select(inputs(c), impl);
    const std::string label = what + (impl == SelectorImpl::kFused ? " [fused]" : " [torch ops]");
    expect_matches(s, r, label);
    expect_distinct(s);
  }
}

SelectorConfig config(SelectorMode mode, int64_t E, int64_t k) {
  SelectorConfig cfg;
  cfg.mode = mode;
  cfg.experts = E;
  cfg.top_k = k;
  return cfg;
}

TEST(Selector, EveryModeMatchesTheLoopReferenceOnRandomInputsWithTies) {
  std::mt19937 rng(1);
  for (auto mode : {SelectorMode::kRouter, SelectorMode::kBlend, SelectorMode::kTrustFirst})
    for (auto [E, k] : {std::pair<int64_t, int64_t>{8, 2}, {16, 4}, {5, 1}, {6, 6}, {64, 8}})
      for (bool bias : {false, true}) {
        auto cfg = config(mode, E, k);
        cfg.alpha = 0.25;
        check(cfg, random_case(rng, 37, E, false, false, bias),
              fmt::format("{} E={} k={} bias={}", mode_name(mode), E, k, bias));
      }
}

TEST(Selector, BlendAtAlphaZeroAndOneIsPureTrustAndPureRouter) {
  std::mt19937 rng(2);
  const Case c = random_case(rng, 50, 12, false, false, false);
  for (double alpha : {0.0, 1.0, 0.3}) {
    auto cfg = config(SelectorMode::kBlend, 12, 3);
    cfg.alpha = alpha;
    check(cfg, c, fmt::format("blend alpha={}", alpha));
  }
  // alpha = 1 picks exactly what router mode picks; alpha = 0 what trust-first picks for trusted tokens.
  auto blend1 = config(SelectorMode::kBlend, 12, 3);
  blend1.alpha = 1;
  Selector a(blend1, c10::Device(c10::kCPU)), b(config(SelectorMode::kRouter, 12, 3), c10::Device(c10::kCPU));
  EXPECT_TRUE(a.select(inputs(c)).experts.equal(b.select(inputs(c)).experts));
}

TEST(Selector, TokensAreRoutedIndependently) {
  // The prototype routed every token with the first token's logits: here token t's choice
  // depends on row t only.
  std::mt19937 rng(3);
  Case c = random_case(rng, 20, 8, false, false, false);
  Selector sel(config(SelectorMode::kRouter, 8, 2), c10::Device(c10::kCPU));
  const at::Tensor before = sel.select(inputs(c)).experts;
  c.probs[0] = std::vector<float>(8, 0.0f);
  c.probs[0][7] = 1.0f;
  c.probs[0][6] = 0.5f;
  const at::Tensor after = sel.select(inputs(c)).experts;
  EXPECT_EQ(after[0][0].item<int64_t>(), 7);
  EXPECT_EQ(after[0][1].item<int64_t>(), 6);
  EXPECT_TRUE(after.narrow(0, 1, 19).equal(before.narrow(0, 1, 19)));
}

TEST(Selector, TrustFirstFallsBackToTheRouterWithoutEvidenceAndExploresWithEpsilon) {
  std::mt19937 rng(4);
  Case c = random_case(rng, 40, 8, false, false, false);
  std::fill(c.trusted.begin(), c.trusted.end(), false);  // no context has enough evidence
  check(config(SelectorMode::kTrustFirst, 8, 2), c, "trust-first without evidence");
  Selector tf(config(SelectorMode::kTrustFirst, 8, 2), c10::Device(c10::kCPU));
  Selector router(config(SelectorMode::kRouter, 8, 2), c10::Device(c10::kCPU));
  EXPECT_TRUE(tf.select(inputs(c)).experts.equal(router.select(inputs(c)).experts));

  std::fill(c.trusted.begin(), c.trusted.end(), true);
  auto explore_all = config(SelectorMode::kTrustFirst, 8, 2);
  explore_all.epsilon = 1.0;
  Selector explorer(explore_all, c10::Device(c10::kCPU));
  const Selection s = explorer.select(inputs(c));
  EXPECT_TRUE(s.experts.equal(router.select(inputs(c)).experts));
  EXPECT_EQ(s.counts.explored.item<int64_t>(), 40);
  EXPECT_EQ(s.counts.trust_routed.item<int64_t>(), 0);

  auto some = config(SelectorMode::kTrustFirst, 8, 2);
  some.epsilon = 0.3;
  some.seed = 9;
  Selector s1(some, c10::Device(c10::kCPU)), s2(some, c10::Device(c10::kCPU));
  const Selection x = s1.select(inputs(c)), y = s2.select(inputs(c));
  EXPECT_TRUE(x.experts.equal(y.experts)) << "same seed, same exploration";
  const int64_t explored = x.counts.explored.item<int64_t>();
  EXPECT_GT(explored, 2);
  EXPECT_LT(explored, 30);
  EXPECT_EQ(explored + x.counts.trust_routed.item<int64_t>(), 40);
}

TEST(Selector, UnavailableExpertsAreSubstitutedWithinClusterAboveThreshold) {
  std::mt19937 rng(5);
  for (bool cluster : {false, true})
    for (double threshold : {0.0, 0.5}) {
      auto cfg = config(SelectorMode::kBlend, 12, 3);
      cfg.substitute_min_trust = threshold;
      check(cfg, random_case(rng, 60, 12, true, cluster, false),
            fmt::format("availability cluster={} threshold={}", cluster, threshold));
    }
}

TEST(Selector, EveryExpertUnavailableExceptOneCluster) {
  std::mt19937 rng(6);
  Case c = random_case(rng, 45, 9, true, true, false);  // clusters e % 3
  for (int64_t e = 0; e < 9; ++e) c.available[e] = c.cluster[e] == 1;
  auto cfg = config(SelectorMode::kRouter, 9, 3);
  check(cfg, c, "one cluster available");
  Selector sel(cfg, c10::Device(c10::kCPU));
  const Selection s = sel.select(inputs(c));
  const at::Tensor used = s.experts.masked_select(s.experts >= 0);
  EXPECT_TRUE((used.remainder(3) == 1).all().item<bool>()) << "only cluster 1 may be used";
  EXPECT_GT(s.counts.unfilled.item<int64_t>(), 0);
}

TEST(Selector, KEqualsEUsesEveryAvailableExpertOnce) {
  std::mt19937 rng(7);
  Case c = random_case(rng, 10, 6, false, false, false);
  check(config(SelectorMode::kRouter, 6, 6), c, "k = E");
  Selector sel(config(SelectorMode::kRouter, 6, 6), c10::Device(c10::kCPU));
  const at::Tensor sorted = std::get<0>(sel.select(inputs(c)).experts.sort(1));
  EXPECT_TRUE(sorted.equal(at::arange(6, at::kLong).expand({10, 6})));
}

TEST(Selector, CapacityPoliciesMatchTheReference) {
  std::mt19937 rng(8);
  for (auto policy : {OverflowPolicy::kDrop, OverflowPolicy::kReroute})
    for (double factor : {0.5, 1.0, 1.25})
      for (bool avail : {false, true}) {
        auto cfg = config(SelectorMode::kBlend, 8, 2);
        cfg.overflow = policy;
        cfg.capacity_factor = factor;
        Case c = random_case(rng, 64, 8, avail, false, false);
        for (auto& row : c.probs) row[3] += 0.5f;  // a hot expert
        check(cfg, c, fmt::format("{} factor={} avail={}", overflow_name(policy), factor, avail));
      }
}

TEST(Selector, CapacityExactlyFullDropsNothing) {
  // 16 tokens, k = 1, E = 4, factor 1: capacity 4, and each expert is the favourite of exactly 4.
  Case c;
  c.T = 16;
  c.E = 4;
  c.probs.assign(16, std::vector<float>(4, 0.0f));
  c.trust.assign(16, std::vector<float>(4, 0.5f));
  c.trusted.assign(16, false);
  for (int t = 0; t < 16; ++t) c.probs[t][t % 4] = 1.0f;
  for (auto policy : {OverflowPolicy::kDrop, OverflowPolicy::kReroute}) {
    auto cfg = config(SelectorMode::kRouter, 4, 1);
    cfg.overflow = policy;
    cfg.capacity_factor = 1.0;
    check(cfg, c, "exactly full");
    Selector sel(cfg, c10::Device(c10::kCPU));
    const Selection s = sel.select(inputs(c));
    EXPECT_EQ(s.counts.dropped.item<int64_t>(), 0);
    EXPECT_EQ(s.counts.rerouted.item<int64_t>(), 0);
    EXPECT_TRUE(s.counts.load.equal(at::full({4}, 4, at::kLong)));
  }
  // One more token for expert 0: drop loses exactly one slot, reroute moves it.
  c.T = 17;
  c.probs.push_back({1.0f, 0.25f, 0.0f, 0.0f});
  c.trust.push_back(std::vector<float>(4, 0.5f));
  c.trusted.push_back(false);
  for (auto policy : {OverflowPolicy::kDrop, OverflowPolicy::kReroute}) {
    auto cfg = config(SelectorMode::kRouter, 4, 1);
    cfg.overflow = policy;
    cfg.capacity_factor = 1.0;  // capacity ceil(17/4) = 5: still room
    check(cfg, c, "17 tokens");
    cfg.capacity_factor = 16.0 / 17.0;  // capacity 4
    check(cfg, c, "17 tokens, capacity 4");
  }
}

TEST(Selector, ConservationUnderDropAndReroute) {
  std::mt19937 rng(9);
  for (auto policy : {OverflowPolicy::kDrop, OverflowPolicy::kReroute}) {
    auto cfg = config(SelectorMode::kRouter, 16, 4);
    cfg.overflow = policy;
    cfg.capacity_factor = 0.75;
    Case c = random_case(rng, 200, 16, true, false, false);
    Selector sel(cfg, c10::Device(c10::kCPU));
    const Selection s = sel.select(inputs(c));
    const int64_t assigned = (s.experts >= 0).sum().item<int64_t>();
    EXPECT_EQ(assigned + s.counts.dropped.item<int64_t>() + s.counts.unfilled.item<int64_t>(), 200 * 4);
    EXPECT_EQ(s.counts.load.sum().item<int64_t>(), assigned);
    EXPECT_LE(s.counts.load.max().item<int64_t>(), expert_capacity(cfg, 200));
    expect_distinct(s);
  }
}

TEST(Selector, WeightsAreRenormalisedProbsAndCarryTheRouterGradient) {
  const at::Tensor logits = at::rand({6, 5}, at::kFloat).requires_grad_(true);
  const at::Tensor probs = logits.softmax(1);
  Selector sel(config(SelectorMode::kRouter, 5, 2), c10::Device(c10::kCPU));
  SelectorInputs in;
  in.probs = probs;
  const Selection s = sel.select(in);
  EXPECT_EQ(s.weights.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::allclose(s.weights.sum(1), at::ones({6}, at::kFloat)));
  (s.weights * at::rand({6, 2}, at::kFloat)).sum().backward();
  ASSERT_TRUE(logits.grad().defined());
  EXPECT_GT(logits.grad().abs().sum().item<float>(), 0.0f);
}

TEST(Selector, BadConfigurationsAreClearErrors) {
  auto expect_option = [](SelectorConfig cfg, const std::string& option) {
    try {
      cfg.validate();
      FAIL() << "expected an error for " << option;
    } catch (const OptionError& e) {
      EXPECT_NE(std::string(e.what()).find("option '" + option + "'"), std::string::npos) << e.what();
    }
  };
  auto cfg = config(SelectorMode::kBlend, 8, 9);
  expect_option(cfg, "--top-k");
  cfg = config(SelectorMode::kBlend, 8, 2);
  cfg.alpha = 1.5;
  expect_option(cfg, "--alpha");
  cfg.alpha = -0.1;
  expect_option(cfg, "--alpha");
  cfg = config(SelectorMode::kBlend, 8, 2);
  cfg.capacity_factor = 0;
  expect_option(cfg, "--capacity-factor");
  cfg = config(SelectorMode::kBlend, 8, 2);
  cfg.epsilon = 2;
  expect_option(cfg, "--epsilon");
  EXPECT_THROW(parse_mode("greedy", "--selector"), OptionError);
  Selector sel(config(SelectorMode::kBlend, 8, 2), c10::Device(c10::kCPU));
  SelectorInputs in;
  in.probs = at::rand({4, 8}, at::kFloat);
  EXPECT_THROW(sel.select(in), Error);  // blend needs trust
  in.trust = at::rand({4, 7}, at::kFloat);
  EXPECT_THROW(sel.select(in), Error);  // wrong shape
}

}  // namespace
}  // namespace trustep::routing

namespace trustep::routing {
namespace {

// The CUDA kernel against the torch-op path on the GPU (and the CPU result), when a GPU exists.
TEST(SelectorCuda, FusedKernelMatchesTorchOps) {
#ifndef TRUSTEP_HAVE_CUDA
  GTEST_SKIP() << "built without CUDA";
#else
  if (!at::globalContext().hasCUDA()) GTEST_SKIP() << "no CUDA device visible on this machine";
  std::mt19937 rng(11);
  for (auto [E, k] : {std::pair<int64_t, int64_t>{8, 2}, {64, 8}, {128, 8}, {6, 6}})
    for (bool avail : {false, true}) {
      auto cfg = config(SelectorMode::kBlend, E, k);
      cfg.substitute_min_trust = avail ? 0.25 : 0.0;
      const Case c = random_case(rng, 300, E, avail, avail, true);
      SelectorInputs cpu = inputs(c), gpu = inputs(c);
      for (at::Tensor* t : {&gpu.probs, &gpu.trust, &gpu.trusted, &gpu.bias, &gpu.available, &gpu.cluster})
        if (t->defined()) *t = t->cuda();
      Selector on_gpu(cfg, c10::Device(c10::kCUDA)), on_cpu(cfg, c10::Device(c10::kCPU));
      const Selection fused = on_gpu.select(gpu, SelectorImpl::kFused);
      const Selection ops = on_gpu.select(gpu, SelectorImpl::kTorchOps);
      const Selection host = on_cpu.select(cpu, SelectorImpl::kFused);
      EXPECT_TRUE(fused.experts.cpu().equal(ops.experts.cpu())) << "E=" << E << " k=" << k;
      EXPECT_TRUE(fused.experts.cpu().equal(host.experts)) << "E=" << E << " k=" << k;
      EXPECT_TRUE(at::allclose(fused.weights.cpu(), host.weights, 1e-6, 1e-6));
    }
#endif
}

}  // namespace
// Top-1: the weight is the probability itself, so the loss still reaches the router.
TEST(GateWeights, TopOneKeepsTheProbabilityAndItsGradient) {
  at::Tensor logits = at::tensor({0.5f, 1.5f, -1.0f, 0.0f, 2.0f, 0.1f}).view({2, 3}).requires_grad_();
  const at::Tensor probs = at::softmax(logits, 1);
  const at::Tensor experts = at::tensor({1, -1}, at::kLong).view({2, 1});
  const at::Tensor w = gate_weights(probs, experts);
  EXPECT_FLOAT_EQ(w[0][0].item<float>(), probs[0][1].item<float>());
  EXPECT_FLOAT_EQ(w[1][0].item<float>(), 0.0f);  // an unused slot weighs nothing
  w.sum().backward();
  EXPECT_GT(logits.grad().abs().sum().item<float>(), 0.0f);
  // k = 2 still renormalises over the used slots.
  const at::Tensor w2 = gate_weights(probs.detach(), at::tensor({1, 0, 2, -1}, at::kLong).view({2, 2}));
  EXPECT_NEAR(w2[0].sum().item<float>(), 1.0f, 1e-6);
  EXPECT_FLOAT_EQ(w2[1][0].item<float>(), 1.0f);
}

}  // namespace trustep::routing

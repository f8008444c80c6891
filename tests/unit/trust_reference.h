// Host-side references for the trust table tests (unit and MPI): random credit batches and
// the update rule written as plain loops over tokens.
#pragma once

#include "trust/trust_table.h"

#include <ATen/ops/empty.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

namespace trustep::trust::testref {

template <typename T>
at::Tensor tensor_of(const std::vector<T>& v, std::vector<int64_t> shape, c10::ScalarType dtype) {
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(dtype));
  EXPECT_EQ(static_cast<size_t>(t.numel()), v.size());
  if (!v.empty()) std::memcpy(t.mutable_data_ptr(), v.data(), v.size() * sizeof(T));  // memcpy(nullptr, ...) is UB
  return t;
}

template <typename T>
std::vector<T> values_of(const at::Tensor& t) {
  const at::Tensor c = t.to(c10::kCPU).contiguous();
  return {c.const_data_ptr<T>(), c.const_data_ptr<T>() + c.numel()};
}

// One layer's credit for one step, kept on the host for the reference.
struct Batch {
  int64_t layer = 0, T = 0, k = 0;
  std::vector<int64_t> ctx, experts;
  std::vector<float> weights, quality;
};

inline Batch random_batch(std::mt19937& rng, const TrustConfig& cfg, int64_t T, int64_t k) {
  Batch b;
  b.layer = std::uniform_int_distribution<int64_t>(0, cfg.layers - 1)(rng);
  b.T = T;
  b.k = k;
  std::uniform_int_distribution<int64_t> ctx(0, cfg.contexts - 1), expert(0, cfg.experts - 1);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  for (int64_t t = 0; t < T; ++t) {
    b.ctx.push_back(ctx(rng));
    b.quality.push_back(t % 17 == 0 ? 1.0f : unit(rng));  // exact 1 and general values
    for (int64_t j = 0; j < k; ++j) {
      const bool empty = unit(rng) < 0.15f;  // dropped or empty slots
      b.experts.push_back(empty ? -1 : expert(rng));
      b.weights.push_back(t % 13 == 0 ? 0.0f : unit(rng));  // exact 0: a use with no weight
    }
  }
  return b;
}

inline void credit(TrustTable& table, const Batch& b, c10::Device device = c10::kCPU) {
  table.credit(b.layer, tensor_of(b.ctx, {b.T}, at::kLong).to(device),
               tensor_of(b.experts, {b.T, b.k}, at::kLong).to(device),
               tensor_of(b.weights, {b.T, b.k}, at::kFloat).to(device), tensor_of(b.quality, {b.T}, at::kFloat).to(device));
}

// The update rule written as a loop over tokens: fixed-point sums per cell, then the EMA in
// fp64 rounded once to fp32.
struct Reference {
  explicit Reference(const TrustConfig& c)
      : cfg(c), n(c.layers * c.contexts * c.experts), trust(n, static_cast<float>(c.prior)), evidence(n, 0.0f),
        wq(n), w(n), uses(n) {}

  void credit(const Batch& b) {
    for (int64_t t = 0; t < b.T; ++t)
      for (int64_t j = 0; j < b.k; ++j) {
        const int64_t e = b.experts[t * b.k + j];
        if (e < 0) continue;
        const auto i = static_cast<size_t>((b.layer * cfg.contexts + b.ctx[t]) * cfg.experts + e);
        const double wt = b.weights[t * b.k + j], q = b.quality[t];
        wq[i] += static_cast<int64_t>(std::nearbyint(wt * q * 4294967296.0));
        w[i] += static_cast<int64_t>(std::nearbyint(wt * 4294967296.0));
        uses[i] += 1;
      }
  }

  void apply() {
    for (size_t i = 0; i < trust.size(); ++i) {
      if (w[i] > 0) {
        const double qbar = static_cast<double>(wq[i]) / static_cast<double>(w[i]);
        // volatile: two separately rounded products, never a fused multiply-add
        volatile double kept = static_cast<double>(trust[i]) * (1.0 - cfg.learning_rate);
        volatile double learnt = qbar * cfg.learning_rate;
        trust[i] = static_cast<float>(kept + learnt);
      }
      evidence[i] = static_cast<float>(static_cast<double>(evidence[i]) + static_cast<double>(uses[i]));
      wq[i] = w[i] = uses[i] = 0;
    }
  }

  TrustConfig cfg;
  size_t n;
  std::vector<float> trust, evidence;
  std::vector<int64_t> wq, w, uses;
};

}  // namespace trustep::trust::testref

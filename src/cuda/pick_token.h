// One token's expert picking (docs/routing.md, steps 2 and 3), shared verbatim by the CUDA
// kernel (select_kernel.cu) and the fused CPU kernel (routing/select_cpu.cpp): one definition
// of the rules, so both devices pick the same experts bit for bit.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define TRUSTEP_HOST_DEVICE __host__ __device__
#else
#define TRUSTEP_HOST_DEVICE
#endif

namespace trustep::cuda {

// Selection scores of one token (docs/routing.md, step 1), the same arithmetic as the torch ops
// of selection_scores: router = p + bias; blend = router·alpha + trust·(1 − alpha), each product
// rounded on its own (no fused multiply-add), so every path ranks experts identically.
struct TokenScoreParams {
  int mode = 0;                  // routing::SelectorMode: 0 router, 1 blend, 2 trust-first
  float alpha = 0.5f;            // blend weight of the router term
  float one_minus_alpha = 0.5f;  // (float)(1 − alpha), computed in double as the torch path does
  const float* bias = nullptr;   // [E] or nullptr
};

TRUSTEP_HOST_DEVICE inline float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
TRUSTEP_HOST_DEVICE inline float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

// probs [E], trust [E] (may be nullptr in router mode); by_trust: trust-first token that routes by
// trust. Writes s [E].
TRUSTEP_HOST_DEVICE inline void score_token(const float* probs, const float* trust, bool by_trust,
                                            const TokenScoreParams& sp, int64_t E, float* s) {
  for (int64_t e = 0; e < E; ++e) {
    const float router = sp.bias != nullptr ? add_rn(probs[e], sp.bias[e]) : probs[e];
    if (sp.mode == 1)
      s[e] = add_rn(mul_rn(router, sp.alpha), mul_rn(trust[e], sp.one_minus_alpha));
    else if (sp.mode == 2 && by_trust)
      s[e] = trust[e];
    else
      s[e] = router;
  }
}

// s [E] scores of the token; avail [E] or nullptr; cluster [E] or nullptr; trust_row [E] or
// nullptr (no threshold). Writes row [k] (experts, -1 unfilled) and substituted [k].
// Scratch: best_score [k] floats, taken [(E + 31) / 32] words.
TRUSTEP_HOST_DEVICE inline void pick_token_experts(const float* s, int64_t E, int64_t k, const bool* avail,
                                                   const int64_t* cluster, const float* trust_row, float min_trust,
                                                   int64_t* row, bool* substituted, float* best_score,
                                                   uint32_t* taken) {
  // Ideal top-k, kept sorted: a later (higher-index) expert displaces only a strictly better one.
  int64_t filled = 0;
  for (int64_t e = 0; e < E; ++e) {
    const float v = s[e];
    if (filled == k && !(v > best_score[k - 1])) continue;
    int64_t pos = filled < k ? filled++ : k - 1;
    while (pos > 0 && v > best_score[pos - 1]) {
      row[pos] = row[pos - 1];
      best_score[pos] = best_score[pos - 1];
      --pos;
    }
    row[pos] = e;
    best_score[pos] = v;
  }
  for (int64_t j = 0; j < k; ++j) substituted[j] = false;
  if (avail == nullptr) return;

  // Substitution, slot by slot: available ideal picks and chosen substitutes are taken.
  for (int64_t w = 0; w < (E + 31) / 32; ++w) taken[w] = 0;
  for (int64_t j = 0; j < k; ++j)
    if (avail[row[j]]) taken[row[j] >> 5] |= 1u << (row[j] & 31);
  for (int64_t j = 0; j < k; ++j) {
    const int64_t wanted = row[j];
    if (avail[wanted]) continue;
    int64_t pick = -1;
    float pick_score = 0.0f;
    for (int64_t e = 0; e < E; ++e) {
      if (!avail[e] || ((taken[e >> 5] >> (e & 31)) & 1u)) continue;
      if (cluster != nullptr && cluster[e] != cluster[wanted]) continue;
      if (trust_row != nullptr && !(trust_row[e] >= min_trust)) continue;
      if (pick < 0 || s[e] > pick_score) {
        pick = e;
        pick_score = s[e];
      }
    }
    row[j] = pick;
    if (pick >= 0) {
      substituted[j] = true;
      taken[pick >> 5] |= 1u << (pick & 31);
    }
  }
}

}  // namespace trustep::cuda

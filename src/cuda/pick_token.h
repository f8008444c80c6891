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

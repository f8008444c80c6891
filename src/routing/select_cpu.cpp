// The fused CPU kernel of expert picking: for each token (in parallel over tokens), ideal
// top-k by score with ties to the lower index, then substitution of unavailable experts; the
// same rules as pick_experts_torch (docs/routing.md), in one pass over each token's scores.
#include "routing/selector.h"

#include "core/error.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <vector>

namespace trustep::routing {

std::pair<at::Tensor, at::Tensor> pick_experts_fused(const SelectorConfig& config, const at::Tensor& scores,
                                                     const SelectorInputs& in) {
  TRUSTEP_CHECK(scores.is_cpu() && scores.is_contiguous() && scores.scalar_type() == at::kFloat,
                "pick_experts_fused: scores must be contiguous fp32 on the CPU (got {} on {})",
                c10::toString(scores.scalar_type()), scores.device().str());
  const int64_t T = scores.size(0), E = config.experts, k = config.top_k;
  at::Tensor experts = at::empty({T, k}, scores.options().dtype(at::kLong));
  at::Tensor substituted = at::empty({T, k}, scores.options().dtype(at::kBool));

  const float* score = scores.data_ptr<float>();                                            // [T, E]
  const at::Tensor available = in.available.defined() ? in.available.contiguous() : at::Tensor();
  const bool* avail = available.defined() ? available.data_ptr<bool>() : nullptr;          // [E]
  const at::Tensor cluster_t = in.cluster.defined() ? in.cluster.contiguous() : at::Tensor();
  const int64_t* cluster = cluster_t.defined() ? cluster_t.data_ptr<int64_t>() : nullptr;  // [E]
  const bool use_threshold = config.substitute_min_trust > 0;
  const at::Tensor trust_t = use_threshold ? in.trust.contiguous() : at::Tensor();
  const float* trust = use_threshold ? trust_t.data_ptr<float>() : nullptr;                // [T, E]
  const float min_trust = static_cast<float>(config.substitute_min_trust);
  int64_t* out_e = experts.data_ptr<int64_t>();                                             // [T, k]
  bool* out_sub = substituted.data_ptr<bool>();                                             // [T, k]

  at::parallel_for(0, T, /*grain_size=*/256, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> best(k);
    std::vector<float> best_score(k);
    std::vector<uint8_t> taken(avail ? E : 0);
    for (int64_t t = begin; t < end; ++t) {
      const float* s = score + t * E;
      // Ideal top-k, kept sorted: a later (higher-index) expert displaces only a strictly better score.
      int64_t filled = 0;
      for (int64_t e = 0; e < E; ++e) {
        const float v = s[e];
        if (filled == k && !(v > best_score[k - 1])) continue;
        int64_t p = filled < k ? filled++ : k - 1;
        while (p > 0 && v > best_score[p - 1]) {
          best[p] = best[p - 1];
          best_score[p] = best_score[p - 1];
          --p;
        }
        best[p] = e;
        best_score[p] = v;
      }
      int64_t* row = out_e + t * k;
      bool* sub = out_sub + t * k;
      for (int64_t j = 0; j < k; ++j) {
        row[j] = best[j];
        sub[j] = false;
      }
      if (!avail) continue;

      std::fill(taken.begin(), taken.end(), 0);
      for (int64_t j = 0; j < k; ++j) taken[best[j]] = avail[best[j]];
      for (int64_t j = 0; j < k; ++j) {
        if (avail[best[j]]) continue;
        int64_t pick = -1;
        float pick_score = 0;
        for (int64_t e = 0; e < E; ++e) {
          if (!avail[e] || taken[e]) continue;
          if (cluster && cluster[e] != cluster[best[j]]) continue;
          if (trust && !(trust[t * E + e] >= min_trust)) continue;
          if (pick < 0 || s[e] > pick_score) {
            pick = e;
            pick_score = s[e];
          }
        }
        row[j] = pick;
        if (pick >= 0) {
          sub[j] = true;
          taken[pick] = 1;
        }
      }
    }
  });
  return {experts, substituted};
}

}  // namespace trustep::routing

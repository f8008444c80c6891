// The fused CPU kernel of expert picking: tokens in parallel, each through the same
// pick_token_experts as the CUDA kernel (src/cuda/pick_token.h), the rules of docs/routing.md.
#include "routing/selector.h"

#include "core/error.h"
#include "cuda/pick_token.h"

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
    std::vector<float> best_score(k);
    std::vector<uint32_t> taken((E + 31) / 32);
    for (int64_t t = begin; t < end; ++t)
      cuda::pick_token_experts(score + t * E, E, k, avail, cluster, trust ? trust + t * E : nullptr, min_trust,
                               out_e + t * k, out_sub + t * k, best_score.data(), taken.data());
  });
  return {experts, substituted};
}

}  // namespace trustep::routing

// The fused CPU kernel: tokens in parallel (OpenMP through at::parallel_for), each scored and
// picked by the functions the CUDA kernel uses (src/cuda/pick_token.h), the rules of
// docs/routing.md, without [T, E] temporaries.
#include "routing/selector.h"

#include "core/error.h"
#include "cuda/pick_token.h"

#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>

#include <vector>

namespace trustep::routing {

std::tuple<at::Tensor, at::Tensor, at::Tensor> pick_experts_fused(const SelectorConfig& config,
                                                                 const SelectorInputs& in, const at::Tensor& explore) {
  TRUSTEP_CHECK(in.probs.is_cpu(), "pick_experts_fused: probs must be on the CPU (got {})", in.probs.device().str());
  const int64_t T = in.probs.size(0), E = config.experts, k = config.top_k;
  const auto opts = in.probs.options();
  at::Tensor experts = at::empty({T, k}, opts.dtype(at::kLong));
  at::Tensor substituted = at::empty({T, k}, opts.dtype(at::kBool));
  at::Tensor slot_scores = at::empty({T, k}, opts.dtype(at::kFloat));

  const at::Tensor probs_t = in.probs.detach().contiguous();
  const bool with_trust = config.mode != SelectorMode::kRouter || config.substitute_min_trust > 0;
  const at::Tensor trust_t = with_trust ? in.trust.contiguous() : at::Tensor();
  const bool trust_first = config.mode == SelectorMode::kTrustFirst;
  const at::Tensor by_trust_t = trust_first ? (in.trusted & ~explore).contiguous() : at::Tensor();
  const at::Tensor bias_t = in.bias.defined() ? in.bias.contiguous() : at::Tensor();
  const at::Tensor available = in.available.defined() ? in.available.contiguous() : at::Tensor();
  const at::Tensor cluster_t = in.cluster.defined() ? in.cluster.contiguous() : at::Tensor();

  const float* probs = probs_t.data_ptr<float>();                                           // [T, E]
  const float* trust = with_trust ? trust_t.data_ptr<float>() : nullptr;                   // [T, E]
  const bool* by_trust = trust_first ? by_trust_t.data_ptr<bool>() : nullptr;              // [T]
  const bool* avail = available.defined() ? available.data_ptr<bool>() : nullptr;          // [E]
  const int64_t* cluster = cluster_t.defined() ? cluster_t.data_ptr<int64_t>() : nullptr;  // [E]
  const bool use_threshold = config.substitute_min_trust > 0;
  const float min_trust = static_cast<float>(config.substitute_min_trust);
  int64_t* out_e = experts.data_ptr<int64_t>();                                             // [T, k]
  bool* out_sub = substituted.data_ptr<bool>();                                             // [T, k]
  float* out_score = slot_scores.data_ptr<float>();                                         // [T, k]
  cuda::TokenScoreParams sp;
  sp.mode = static_cast<int>(config.mode);
  sp.alpha = static_cast<float>(config.alpha);
  sp.one_minus_alpha = static_cast<float>(1.0 - config.alpha);
  sp.bias = bias_t.defined() ? bias_t.data_ptr<float>() : nullptr;

  at::parallel_for(0, T, /*grain_size=*/256, [&](int64_t begin, int64_t end) {
    std::vector<float> s(E), best_score(k);
    std::vector<uint32_t> taken((E + 31) / 32);
    for (int64_t t = begin; t < end; ++t) {
      const float* trust_row = trust ? trust + t * E : nullptr;
      cuda::score_token(probs + t * E, trust_row, by_trust && by_trust[t], sp, E, s.data());
      int64_t* row = out_e + t * k;
      cuda::pick_token_experts(s.data(), E, k, avail, cluster, use_threshold ? trust_row : nullptr, min_trust, row,
                               out_sub + t * k, best_score.data(), taken.data());
      for (int64_t j = 0; j < k; ++j) out_score[t * k + j] = s[row[j] >= 0 ? row[j] : 0];
    }
  });
  return {experts, substituted, slot_scores};
}

}  // namespace trustep::routing

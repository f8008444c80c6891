#include "cuda/select_kernel.h"

#include "cuda/pick_token.h"

namespace trustep::cuda {
namespace {

__global__ void pick_experts_kernel(PickExpertsParams p) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= p.tokens) return;
  float best_score[kPickMaxTopK];
  uint32_t taken[kPickMaxExperts / 32];
  pick_token_experts(p.scores + t * p.experts, p.experts, p.top_k, p.available, p.cluster,
                     p.trust != nullptr ? p.trust + t * p.experts : nullptr, p.min_trust, p.experts_out + t * p.top_k,
                     p.substituted + t * p.top_k, best_score, taken);
}

}  // namespace

cudaError_t launch_pick_experts(const PickExpertsParams& params, cudaStream_t stream) {
  if (params.tokens == 0) return cudaSuccess;
  constexpr int kThreads = 128;
  const auto blocks = static_cast<unsigned>((params.tokens + kThreads - 1) / kThreads);
  pick_experts_kernel<<<blocks, kThreads, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace trustep::cuda

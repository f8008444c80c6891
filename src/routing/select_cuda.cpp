// CUDA tensors → the fused picking kernel (src/cuda/select_kernel.cu), on the current stream.
#include "core/error.h"
#include "cuda/select_kernel.h"
#include "routing/selector.h"

#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>

namespace trustep::routing {

bool fused_cuda_supports(const SelectorConfig& config) {
  return config.top_k <= cuda::kPickMaxTopK && config.experts <= cuda::kPickMaxExperts;
}

std::pair<at::Tensor, at::Tensor> pick_experts_cuda(const SelectorConfig& config, const at::Tensor& scores,
                                                    const SelectorInputs& in) {
  TRUSTEP_CHECK(scores.is_cuda() && scores.is_contiguous() && scores.scalar_type() == at::kFloat,
                "pick_experts_cuda: scores must be contiguous fp32 on a CUDA device");
  TRUSTEP_CHECK(fused_cuda_supports(config), "pick_experts_cuda: k = {} / E = {} exceed the kernel limits ({} / {})",
                config.top_k, config.experts, cuda::kPickMaxTopK, cuda::kPickMaxExperts);
  c10::cuda::CUDAGuard guard(scores.device());
  const int64_t T = scores.size(0), k = config.top_k;
  at::Tensor experts = at::empty({T, k}, scores.options().dtype(at::kLong));
  at::Tensor substituted = at::empty({T, k}, scores.options().dtype(at::kBool));
  const at::Tensor available = in.available.defined() ? in.available.contiguous() : at::Tensor();
  const at::Tensor cluster = in.cluster.defined() ? in.cluster.contiguous() : at::Tensor();
  const bool threshold = config.substitute_min_trust > 0;
  const at::Tensor trust = threshold ? in.trust.contiguous() : at::Tensor();

  cuda::PickExpertsParams p;
  p.scores = scores.data_ptr<float>();
  p.available = available.defined() ? available.data_ptr<bool>() : nullptr;
  p.cluster = cluster.defined() ? cluster.data_ptr<int64_t>() : nullptr;
  p.trust = threshold ? trust.data_ptr<float>() : nullptr;
  p.min_trust = static_cast<float>(config.substitute_min_trust);
  p.tokens = T;
  p.experts = config.experts;
  p.top_k = k;
  p.experts_out = experts.data_ptr<int64_t>();
  p.substituted = substituted.data_ptr<bool>();
  const cudaError_t status = cuda::launch_pick_experts(p, at::cuda::getCurrentCUDAStream());
  TRUSTEP_CHECK(status == cudaSuccess, "pick_experts_cuda: kernel launch failed: {}", cudaGetErrorString(status));
  return {experts, substituted};
}

}  // namespace trustep::routing

#include "cuda/select_kernel.h"

namespace trustep::cuda {
namespace {

__global__ void pick_experts_kernel(PickExpertsParams p) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= p.tokens) return;
  const int64_t E = p.experts, k = p.top_k;
  const float* s = p.scores + t * E;  // [E] this token's scores

  // Ideal top-k, kept sorted: a later (higher-index) expert displaces only a strictly better one.
  int64_t best[kPickMaxTopK];
  float best_score[kPickMaxTopK];
  int64_t filled = 0;
  for (int64_t e = 0; e < E; ++e) {
    const float v = s[e];
    if (filled == k && !(v > best_score[k - 1])) continue;
    int64_t pos = filled < k ? filled++ : k - 1;
    while (pos > 0 && v > best_score[pos - 1]) {
      best[pos] = best[pos - 1];
      best_score[pos] = best_score[pos - 1];
      --pos;
    }
    best[pos] = e;
    best_score[pos] = v;
  }
  int64_t* row = p.experts_out + t * k;  // [k]
  bool* sub = p.substituted + t * k;     // [k]
  for (int64_t j = 0; j < k; ++j) {
    row[j] = best[j];
    sub[j] = false;
  }
  if (p.available == nullptr) return;

  uint32_t taken[kPickMaxExperts / 32];
  for (int64_t w = 0; w < (E + 31) / 32; ++w) taken[w] = 0;
  for (int64_t j = 0; j < k; ++j)
    if (p.available[best[j]]) taken[best[j] >> 5] |= 1u << (best[j] & 31);
  for (int64_t j = 0; j < k; ++j) {
    if (p.available[best[j]]) continue;
    int64_t pick = -1;
    float pick_score = 0.0f;
    for (int64_t e = 0; e < E; ++e) {
      if (!p.available[e] || (taken[e >> 5] >> (e & 31)) & 1u) continue;
      if (p.cluster != nullptr && p.cluster[e] != p.cluster[best[j]]) continue;
      if (p.trust != nullptr && !(p.trust[t * E + e] >= p.min_trust)) continue;
      if (pick < 0 || s[e] > pick_score) {
        pick = e;
        pick_score = s[e];
      }
    }
    row[j] = pick;
    if (pick >= 0) {
      sub[j] = true;
      taken[pick >> 5] |= 1u << (pick & 31);
    }
  }
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

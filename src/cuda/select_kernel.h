// Fused expert picking on the GPU: ideal top-k (ties → lower index) and substitution of
// unavailable experts, one thread per token, the rules of docs/routing.md. No ATen here: a
// params struct and one launch function (src/routing/select_cuda.cpp wraps tensors).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace trustep::cuda {

constexpr int64_t kPickMaxTopK = 32;      // per-thread registers/local memory bound
constexpr int64_t kPickMaxExperts = 4096; // taken-bitmap bound

struct PickExpertsParams {
  const float* scores = nullptr;     // [T, E] selection scores, row-major
  const bool* available = nullptr;   // [E] or nullptr: every expert available
  const int64_t* cluster = nullptr;  // [E] or nullptr: substitutes from any cluster
  const float* trust = nullptr;      // [T, E] or nullptr: no trust threshold
  float min_trust = 0.0f;            // substitutes need trust >= this (when trust != nullptr)
  int64_t tokens = 0;                // T
  int64_t experts = 0;               // E <= kPickMaxExperts
  int64_t top_k = 0;                 // k <= kPickMaxTopK, k <= E
  int64_t* experts_out = nullptr;    // [T, k] chosen experts, -1 = unfilled
  bool* substituted = nullptr;       // [T, k] slot got a substitute
};

// Enqueues the kernel on `stream`; returns the launch error (cudaSuccess when queued).
cudaError_t launch_pick_experts(const PickExpertsParams& params, cudaStream_t stream);

}  // namespace trustep::cuda

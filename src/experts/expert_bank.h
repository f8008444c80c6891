// The local expert bank: SwiGLU experts (Mixtral / Qwen3-MoE layout) for this rank's slice of
// the global experts, computed per expert over contiguous row segments. Weights exist only
// for the local experts, so per-rank memory is local_experts/E of the whole (docs/experts.md).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <string>
#include <vector>

namespace trustep::experts {

struct ExpertBankConfig {
  int64_t hidden = 0;         // H
  int64_t ffn = 0;            // F (intermediate size)
  int64_t num_experts = 0;    // E, global
  int64_t first_expert = 0;   // global index of this rank's first local expert
  int64_t local_experts = 0;  // experts held here (E / world)
  // Weights and compute dtype: fp32 or bf16 (bf16 matmuls accumulate in fp32 on CPU and CUDA).
  c10::ScalarType dtype = c10::ScalarType::Float;
  uint64_t seed = 0;          // initialisation
  // OptionError naming --hidden / --ffn / --experts / --dtype, or the expert range when
  // first_expert + local_experts > num_experts.
  void validate() const;
};

// y = down(silu(gate(x)) * up(x)) per expert.
class ExpertBankImpl : public torch::nn::Module {
 public:
  // Initialises each local expert from (seed, global expert index) only: see init_expert.
  explicit ExpertBankImpl(const ExpertBankConfig& config);

  // x [N, H] in config.dtype, on the weights' device, rows grouped by local expert: counts[i]
  // rows for local expert i, in order, sum(counts) == N (length local_experts). Returns [N, H]
  // in config.dtype. One matmul triple per non-empty expert on its segment; empty experts cost
  // nothing. Differentiable w.r.t. x and the weights; the result is always connected to x in
  // the autograd graph (also for N = 0), so a backward exchange behind it still runs.
  at::Tensor forward(const at::Tensor& x, const std::vector<int64_t>& counts);

  // Reads this rank's experts from a Hugging Face style safetensors file:
  //   {prefix}experts.{e}.gate_proj.weight [F, H]
  //   {prefix}experts.{e}.up_proj.weight   [F, H]
  //   {prefix}experts.{e}.down_proj.weight [H, F]
  // for the global e of this rank only (other experts' bytes are never read); any float dtype,
  // cast to config.dtype. Errors name the file, the tensor and the expected shape; nothing is
  // changed unless every tensor is valid.
  void load_hf(const std::string& path, const std::string& prefix);

  const ExpertBankConfig& config() const { return config_; }

  at::Tensor gate;  // [local, F, H] parameter "gate"
  at::Tensor up;    // [local, F, H] parameter "up"
  at::Tensor down;  // [local, H, F] parameter "down"

 private:
  ExpertBankConfig config_;
};

TORCH_MODULE(ExpertBank);

// Writes the bank's local experts in load_hf's layout (global names, dtype as held).
void save_hf(const ExpertBankImpl& bank, const std::string& path, const std::string& prefix);

// The tensor names of global expert e: "{prefix}experts.{e}.{gate,up,down}_proj.weight".
std::string hf_weight_name(const std::string& prefix, int64_t expert, const char* proj);

// Fills gate [F, H], up [F, H], down [H, F] (fp32, CPU) of global expert `expert`: a CPU
// generator seeded with seed * 1000003 + expert draws uniform(±1/sqrt(H)) for gate, then up,
// then uniform(±1/sqrt(F)) for down. Depends on nothing else, so any world layout agrees.
void init_expert(uint64_t seed, int64_t expert, const at::Tensor& gate, const at::Tensor& up,
                 const at::Tensor& down);

}  // namespace trustep::experts

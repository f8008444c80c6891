// trustep::model::TransformerLM: a decoder-only MoE language model (Llama / Qwen3-MoE shape).
// Token embedding → `layers` × [RMSNorm → GQA causal attention with RoPE → residual; RMSNorm →
// MoELayer → residual] → RMSNorm → LM head. Everything except the experts is replicated (data
// parallel) and initialised from config.seed alone; the experts are sharded by the MoE layers.
// See docs/model.md.
#pragma once

#include "comm/communicator.h"
#include "model/moe_layer.h"
#include "routing/selector.h"

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <nlohmann/json.hpp>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace trustep::model {

struct ModelConfig {
  int64_t vocab = 264;      // V (the byte tokenizer: 256 bytes + 8 specials)
  int64_t hidden = 256;     // H
  int64_t layers = 4;       // blocks
  int64_t heads = 4;        // query heads
  int64_t kv_heads = 4;     // key/value heads (GQA); heads % kv_heads == 0
  int64_t ffn = 512;        // F per expert
  int64_t experts = 8;      // E (global), a multiple of the world size
  int64_t top_k = 2;        // k
  int64_t max_seq = 256;    // RoPE table and KV cache length (option --seq-len)
  double rope_theta = 10000.0;
  double norm_eps = 1e-6;
  c10::ScalarType dtype = c10::ScalarType::Float;         // parameters and compute: fp32 or bf16
  c10::ScalarType comm_dtype = c10::ScalarType::Float;    // MoE rows on the wire
  c10::ScalarType router_dtype = c10::ScalarType::Float;  // router weight (logits are fp32 anyway)
  routing::SelectorConfig selector;  // experts / top_k are taken from above
  uint64_t seed = 0;                 // every initialisation (replicated and expert weights)
  bool check_finite = false;         // NaN/Inf router logits and LM logits → error (syncs)

  int64_t head_dim() const { return hidden / heads; }
  // Throws OptionError naming the CLI option of the first bad field (--vocab, --hidden, --layers,
  // --heads, --kv-heads, --ffn, --experts, --top-k, --seq-len, --rope-theta, --norm-eps, --dtype,
  // --comm-dtype, --router-dtype, then the selector's options).
  void validate() const;
  // Every field; dtypes as short names ("fp32", "bf16"), selector mode / overflow by name.
  nlohmann::json to_json() const;
  // Inverse of to_json; every key is required. Errors (OptionError) name the missing or bad key.
  static ModelConfig from_json(const nlohmann::json& j);
};

// Per-layer routing hook: given the MoE layer's input x [T, H] (after the norm, T = B·S
// flattened), returns the SelectorInputs trust fields (trust / trusted / bias / available /
// cluster) for that layer; probs are filled in by MoELayer.
using RoutingHook = std::function<routing::SelectorInputs(int layer, const at::Tensor& x)>;

struct LMOutput {
  at::Tensor logits;        // [B, S, V] fp32
  at::Tensor z_loss;        // [] fp32, summed over layers
  at::Tensor balance_loss;  // [] fp32, mean over layers
  std::vector<routing::Selection> selections;  // one per layer, T = B·S rows
};

// Keys and values of every layer for incremental decoding. Make one with
// TransformerLMImpl::new_cache; forward(new_tokens, hook, &cache) appends.
struct KVCache {
  std::vector<at::Tensor> k;  // per layer [B, kv_heads, max_seq, head_dim] in the model dtype
  std::vector<at::Tensor> v;  // per layer [B, kv_heads, max_seq, head_dim]
  int64_t length = 0;         // positions filled (the next token's position)
  int64_t batch() const { return k.empty() ? 0 : k.front().size(0); }
  int64_t capacity() const { return k.empty() ? 0 : k.front().size(2); }
  void clear() { length = 0; }  // the tensors are overwritten, not zeroed
};

// y = x / rms(x) · weight, computed in fp32, returned in x's dtype. Parameter "weight" [H].
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t hidden, double eps, c10::ScalarType dtype);
  at::Tensor forward(const at::Tensor& x);
  at::Tensor weight;  // [H], ones at start

 private:
  double eps_;
};
TORCH_MODULE(RMSNorm);

// A bias-free linear map (or embedding table) with one parameter "weight" [out, in], so the
// parameter names read "q_proj.weight", "embed.weight"... Initialised by the owner.
class WeightImpl : public torch::nn::Module {
 public:
  WeightImpl(int64_t out, int64_t in, c10::ScalarType dtype);
  at::Tensor forward(const at::Tensor& x);  // x [..., in] → [..., out]
  at::Tensor weight;                        // [out, in]
};
TORCH_MODULE(Weight);

// Grouped-query causal self-attention with rotary position embeddings (rotate-half, Llama).
class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const ModelConfig& config);
  // x [B, S, H]; cos / sin [S, head_dim] fp32 for positions offset..offset+S. With k_cache /
  // v_cache ([B, kv_heads, max_seq, head_dim]) the new keys and values are written at
  // offset..offset+S and attention covers positions 0..offset+S. Returns [B, S, H].
  at::Tensor forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, int64_t offset,
                     at::Tensor* k_cache, at::Tensor* v_cache);

  Weight q_proj{nullptr};  // [heads·D, H]
  Weight k_proj{nullptr};  // [kv_heads·D, H]
  Weight v_proj{nullptr};  // [kv_heads·D, H]
  Weight o_proj{nullptr};  // [H, heads·D]

 private:
  int64_t heads_, kv_heads_, head_dim_;
};
TORCH_MODULE(Attention);

struct BlockOutput {
  at::Tensor hidden;  // [B, S, H]
  MoEOutput moe;      // moe.hidden is the MoE branch before the residual
};

class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(const ModelConfig& config, int layer, comm::Communicator& comm);
  BlockOutput forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, int64_t offset,
                      const RoutingHook& hook, at::Tensor* k_cache, at::Tensor* v_cache);

  RMSNorm attn_norm{nullptr};
  Attention attn{nullptr};
  RMSNorm moe_norm{nullptr};
  MoELayer moe{nullptr};

 private:
  int layer_;
};
TORCH_MODULE(Block);

class TransformerLMImpl : public torch::nn::Module {
 public:
  // Validates the config; the MoE layers shard the experts over comm's ranks (E % world == 0).
  TransformerLMImpl(const ModelConfig& config, comm::Communicator& comm);

  // tokens [B, S] int64 in [0, vocab). Without a cache S <= max_seq and positions start at 0.
  // With a cache: tokens are the new tokens only (B == cache batch), positions continue at
  // cache->length, their keys/values are appended and cache->length grows by S.
  // Under expert parallelism this is collective: every rank must call it with the same B·S.
  LMOutput forward(const at::Tensor& tokens, const RoutingHook& hook = {}, KVCache* cache = nullptr);

  // A cache for `batch` sequences of up to max_seq tokens, on the parameters' device.
  KVCache new_cache(int64_t batch) const;

  // Batch 1: prefills `prompt` through a KV cache, then decodes one token at a time under
  // NoGradGuard. temperature 0 = greedy (argmax, lowest index on ties), else softmax(logits /
  // temperature) sampled with a CPU generator seeded with `seed`. Stops after max_new_tokens or
  // once stop_token (-1: none) is produced (it is included). Returns only the new tokens.
  // Collective under EP: the sampled token is broadcast from rank 0, so every rank decodes the
  // same sequence and makes the same forward calls even if logits differed in the last bit.
  std::vector<int64_t> generate(const std::vector<int64_t>& prompt, int64_t max_new_tokens, double temperature,
                                uint64_t seed, int64_t stop_token = -1, const RoutingHook& hook = {});

  const ModelConfig& config() const { return config_; }
  // The MoE layer of block i (for trust hooks, stats, poison, HF loading).
  MoELayer& moe(int64_t i) { return blocks_.at(static_cast<size_t>(i))->moe; }
  std::vector<MoELayer> moe_layers() const;
  const std::vector<Block>& blocks() const { return blocks_; }

  Weight embed{nullptr};                 // "embed.weight" [V, H]
  torch::nn::ModuleList layers{nullptr};  // "layers.{i}.…" (Block)
  RMSNorm norm{nullptr};                 // "norm.weight" [H]
  Weight lm_head{nullptr};               // "lm_head.weight" [V, H]

 private:
  ModelConfig config_;
  comm::Communicator& comm_;
  std::vector<Block> blocks_;  // the same modules as `layers`, typed
  at::Tensor rope_cos_, rope_sin_;  // [max_seq, head_dim] fp32, not parameters (not checkpointed)
};
TORCH_MODULE(TransformerLM);

// Names of the parameters that exist only on the rank holding the expert (the expert banks'
// "layers.{i}.moe.experts.{gate,up,down}"): everything else is replicated.
bool is_expert_parameter(const std::string& name);

}  // namespace trustep::model

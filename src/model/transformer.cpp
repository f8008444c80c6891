#include "model/transformer.h"

#include "core/dtype.h"
#include "core/error.h"
#include "core/hash.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/argmax.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/multinomial.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/outer.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/scaled_dot_product_attention.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <fmt/ranges.h>

#include <cmath>
#include <string>

namespace trustep::model {
namespace {

[[noreturn]] void bad_option(const std::string& option, const std::string& value, const std::string& why) {
  throw OptionError(fmt::format("invalid value '{}' for option '{}': {}", value, option, why), TRUSTEP_ORIGIN);
}

// splitmix64 finaliser: stable across platforms and standard libraries (std::hash is not).
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

MoELayerConfig moe_config(const ModelConfig& c, int layer) {
  MoELayerConfig m;
  m.hidden = c.hidden;
  m.ffn = c.ffn;
  m.experts = c.experts;
  m.top_k = c.top_k;
  m.dtype = c.dtype;
  m.comm_dtype = c.comm_dtype;
  m.router_dtype = c.router_dtype;
  m.selector = c.selector;
  m.selector.experts = c.experts;
  m.selector.top_k = c.top_k;
  m.layer = layer;
  m.seed = c.seed;
  m.check_finite = c.check_finite;
  return m;
}

at::Tensor rotate_half(const at::Tensor& x) {  // [..., D] → [..., D]: (-x2, x1)
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// x [B, heads, S, D] in any dtype; cos / sin [S, D] fp32. Rotation in fp32, result in x's dtype.
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const at::Tensor xf = x.to(at::kFloat);
  return (xf * cos + rotate_half(xf) * sin).to(x.scalar_type());
}

template <typename T>
T json_get(const nlohmann::json& j, const char* key, const std::string& where = "") {
  const std::string name = where.empty() ? key : where + "." + key;
  TRUSTEP_CHECK_AS(OptionError, j.is_object(), "model config: '{}' must be a JSON object",
                   where.empty() ? "the config" : where);
  auto it = j.find(key);
  TRUSTEP_CHECK_AS(OptionError, it != j.end(), "model config: missing key '{}'", name);
  try {
    return it->template get<T>();
  } catch (const nlohmann::json::exception& e) {
    throw OptionError(fmt::format("model config: bad value {} for key '{}': {}", it->dump(), name, e.what()),
                      TRUSTEP_ORIGIN);
  }
}

c10::ScalarType json_dtype(const nlohmann::json& j, const char* key) {
  const std::string name = json_get<std::string>(j, key);
  try {
    return parse_dtype(name, key);
  } catch (const OptionError&) {
    throw OptionError(fmt::format("model config: bad value '{}' for key '{}': not a dtype name", name, key),
                      TRUSTEP_ORIGIN);
  }
}

}  // namespace

// --- ModelConfig ---------------------------------------------------------------------------

void ModelConfig::validate() const {
  auto s = [](auto v) { return fmt::format("{}", v); };
  if (vocab < 1) bad_option("--vocab", s(vocab), "must be >= 1");
  if (hidden < 1) bad_option("--hidden", s(hidden), "must be >= 1");
  if (layers < 1) bad_option("--layers", s(layers), "must be >= 1");
  if (heads < 1) bad_option("--heads", s(heads), "must be >= 1");
  if (hidden % heads != 0)
    bad_option("--heads", s(heads), fmt::format("must divide --hidden ({})", hidden));
  if (head_dim() % 2 != 0)
    bad_option("--heads", s(heads),
               fmt::format("head dim --hidden / --heads = {} must be even (rotary embeddings)", head_dim()));
  if (kv_heads < 1 || heads % kv_heads != 0)
    bad_option("--kv-heads", s(kv_heads), fmt::format("must be >= 1 and divide --heads ({})", heads));
  if (ffn < 1) bad_option("--ffn", s(ffn), "must be >= 1");
  if (experts < 1) bad_option("--experts", s(experts), "must be >= 1");
  if (top_k < 1 || top_k > experts)
    bad_option("--top-k", s(top_k), fmt::format("must be in [1, {}] (the number of experts)", experts));
  if (max_seq < 1) bad_option("--seq-len", s(max_seq), "must be >= 1");
  if (!(rope_theta > 0) || !std::isfinite(rope_theta)) bad_option("--rope-theta", s(rope_theta), "must be > 0");
  if (!(norm_eps > 0) || !std::isfinite(norm_eps)) bad_option("--norm-eps", s(norm_eps), "must be > 0");
  if (dtype != at::kFloat && dtype != at::kBFloat16) bad_option("--dtype", dtype_name(dtype), "expected fp32 or bf16");
  if (comm_dtype != at::kFloat && comm_dtype != at::kBFloat16 && comm_dtype != at::kHalf)
    bad_option("--comm-dtype", dtype_name(comm_dtype), "expected fp32, bf16 or fp16");
  if (router_dtype != at::kFloat && router_dtype != at::kBFloat16)
    bad_option("--router-dtype", dtype_name(router_dtype), "expected fp32 or bf16");
  routing::SelectorConfig sel = selector;
  sel.experts = experts;
  sel.top_k = top_k;
  sel.validate();
}

nlohmann::json ModelConfig::to_json() const {
  return {
      {"vocab", vocab},
      {"hidden", hidden},
      {"layers", layers},
      {"heads", heads},
      {"kv_heads", kv_heads},
      {"ffn", ffn},
      {"experts", experts},
      {"top_k", top_k},
      {"max_seq", max_seq},
      {"rope_theta", rope_theta},
      {"norm_eps", norm_eps},
      {"dtype", dtype_name(dtype)},
      {"comm_dtype", dtype_name(comm_dtype)},
      {"router_dtype", dtype_name(router_dtype)},
      {"seed", seed},
      {"check_finite", check_finite},
      {"selector",
       {
           {"mode", routing::mode_name(selector.mode)},
           {"alpha", selector.alpha},
           {"epsilon", selector.epsilon},
           {"overflow", routing::overflow_name(selector.overflow)},
           {"capacity_factor", selector.capacity_factor},
           {"substitute_min_trust", selector.substitute_min_trust},
           {"seed", selector.seed},
       }},
  };
}

ModelConfig ModelConfig::from_json(const nlohmann::json& j) {
  ModelConfig c;
  c.vocab = json_get<int64_t>(j, "vocab");
  c.hidden = json_get<int64_t>(j, "hidden");
  c.layers = json_get<int64_t>(j, "layers");
  c.heads = json_get<int64_t>(j, "heads");
  c.kv_heads = json_get<int64_t>(j, "kv_heads");
  c.ffn = json_get<int64_t>(j, "ffn");
  c.experts = json_get<int64_t>(j, "experts");
  c.top_k = json_get<int64_t>(j, "top_k");
  c.max_seq = json_get<int64_t>(j, "max_seq");
  c.rope_theta = json_get<double>(j, "rope_theta");
  c.norm_eps = json_get<double>(j, "norm_eps");
  c.dtype = json_dtype(j, "dtype");
  c.comm_dtype = json_dtype(j, "comm_dtype");
  c.router_dtype = json_dtype(j, "router_dtype");
  c.seed = json_get<uint64_t>(j, "seed");
  c.check_finite = json_get<bool>(j, "check_finite");
  TRUSTEP_CHECK_AS(OptionError, j.contains("selector"), "model config: missing key 'selector'");
  const nlohmann::json& s = j.at("selector");
  const std::string mode = json_get<std::string>(s, "mode", "selector");
  const std::string overflow = json_get<std::string>(s, "overflow", "selector");
  try {
    c.selector.mode = routing::parse_mode(mode, "selector.mode");
    c.selector.overflow = routing::parse_overflow(overflow, "selector.overflow");
  } catch (const OptionError& e) {
    throw OptionError(fmt::format("model config: {}", e.what()), TRUSTEP_ORIGIN);
  }
  c.selector.alpha = json_get<double>(s, "alpha", "selector");
  c.selector.epsilon = json_get<double>(s, "epsilon", "selector");
  c.selector.capacity_factor = json_get<double>(s, "capacity_factor", "selector");
  c.selector.substitute_min_trust = json_get<double>(s, "substitute_min_trust", "selector");
  c.selector.seed = json_get<uint64_t>(s, "seed", "selector");
  c.selector.experts = c.experts;
  c.selector.top_k = c.top_k;
  c.validate();
  return c;
}

// --- building blocks -----------------------------------------------------------------------

RMSNormImpl::RMSNormImpl(int64_t hidden, double eps, c10::ScalarType dtype) : eps_(eps) {
  weight = register_parameter("weight", at::ones({hidden}, at::TensorOptions().dtype(dtype)));
}

at::Tensor RMSNormImpl::forward(const at::Tensor& x) {
  // fp32 statistics: bf16 squares lose too much precision.
  const at::Tensor xf = x.to(at::kFloat);                                      // [..., H]
  const at::Tensor normed = xf * at::rsqrt(xf.pow(2).mean({-1}, true) + eps_);  // [..., H]
  return (normed * weight.to(at::kFloat)).to(x.scalar_type());
}

WeightImpl::WeightImpl(int64_t out, int64_t in, c10::ScalarType dtype) {
  weight = register_parameter("weight", at::empty({out, in}, at::TensorOptions().dtype(dtype)));
}

at::Tensor WeightImpl::forward(const at::Tensor& x) { return at::linear(x, weight); }

AttentionImpl::AttentionImpl(const ModelConfig& c)
    : heads_(c.heads), kv_heads_(c.kv_heads), head_dim_(c.head_dim()) {
  q_proj = register_module("q_proj", Weight(c.heads * head_dim_, c.hidden, c.dtype));
  k_proj = register_module("k_proj", Weight(c.kv_heads * head_dim_, c.hidden, c.dtype));
  v_proj = register_module("v_proj", Weight(c.kv_heads * head_dim_, c.hidden, c.dtype));
  o_proj = register_module("o_proj", Weight(c.hidden, c.heads * head_dim_, c.dtype));
}

at::Tensor AttentionImpl::forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                                  int64_t offset, at::Tensor* k_cache, at::Tensor* v_cache) {
  const int64_t B = x.size(0), S = x.size(1), D = head_dim_;
  at::Tensor q = q_proj->forward(x).view({B, S, heads_, D}).transpose(1, 2);     // [B, h, S, D]
  at::Tensor k = k_proj->forward(x).view({B, S, kv_heads_, D}).transpose(1, 2);  // [B, kv, S, D]
  at::Tensor v = v_proj->forward(x).view({B, S, kv_heads_, D}).transpose(1, 2);  // [B, kv, S, D]
  q = apply_rope(q, cos, sin);
  k = apply_rope(k, cos, sin);
  if (k_cache != nullptr) {
    k_cache->narrow(2, offset, S).copy_(k);
    v_cache->narrow(2, offset, S).copy_(v);
    k = k_cache->narrow(2, 0, offset + S);  // [B, kv, L, D], L = offset + S
    v = v_cache->narrow(2, 0, offset + S);
  }
  if (kv_heads_ != heads_) {  // GQA: query head i reads kv head i / (heads / kv_heads)
    k = k.repeat_interleave(heads_ / kv_heads_, 1);  // [B, h, L, D]
    v = v.repeat_interleave(heads_ / kv_heads_, 1);
  }
  at::Tensor out;
  if (offset == 0) {
    // Square causal mask; SDPA's is_causal aligns top-left, which is right only here.
    out = at::scaled_dot_product_attention(q, k, v, std::nullopt, 0.0, /*is_causal=*/true);
  } else if (S == 1) {
    out = at::scaled_dot_product_attention(q, k, v);  // one new query sees every cached position
  } else {
    // Query i sits at position offset + i and sees keys 0..offset + i: mask [S, L] bool.
    const auto opts = at::TensorOptions().dtype(at::kLong).device(x.device());
    const at::Tensor mask = at::arange(offset + S, opts).unsqueeze(0) <= (at::arange(S, opts) + offset).unsqueeze(1);
    out = at::scaled_dot_product_attention(q, k, v, mask);
  }
  return o_proj->forward(out.transpose(1, 2).reshape({B, S, heads_ * D}));  // [B, S, H]
}

BlockImpl::BlockImpl(const ModelConfig& c, int layer, comm::Communicator& comm) : layer_(layer) {
  attn_norm = register_module("attn_norm", RMSNorm(c.hidden, c.norm_eps, c.dtype));
  attn = register_module("attn", Attention(c));
  moe_norm = register_module("moe_norm", RMSNorm(c.hidden, c.norm_eps, c.dtype));
  moe = register_module("moe", MoELayer(moe_config(c, layer), comm));
}

BlockOutput BlockImpl::forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, int64_t offset,
                               const RoutingHook& hook, at::Tensor* k_cache, at::Tensor* v_cache) {
  BlockOutput out;
  const at::Tensor h = x + attn->forward(attn_norm->forward(x), cos, sin, offset, k_cache, v_cache);  // [B, S, H]
  const at::Tensor m = moe_norm->forward(h).reshape({-1, h.size(-1)});  // [T, H], T = B·S
  const routing::SelectorInputs inputs = hook ? hook(layer_, m) : routing::SelectorInputs{};
  out.moe = moe->forward(m, inputs);
  out.hidden = h + out.moe.hidden.view(h.sizes());
  return out;
}

// --- the model -----------------------------------------------------------------------------

bool is_expert_parameter(const std::string& name) { return name.find(".moe.experts.") != std::string::npos; }

TransformerLMImpl::TransformerLMImpl(const ModelConfig& config, comm::Communicator& comm)
    : config_(config), comm_(comm) {
  config_.validate();
  config_.selector.experts = config_.experts;
  config_.selector.top_k = config_.top_k;
  const ModelConfig& c = config_;
  embed = register_module("embed", Weight(c.vocab, c.hidden, c.dtype));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.layers; ++i) {
    blocks_.push_back(Block(c, static_cast<int>(i), comm));
    layers->push_back(blocks_.back());
  }
  norm = register_module("norm", RMSNorm(c.hidden, c.norm_eps, c.dtype));
  lm_head = register_module("lm_head", Weight(c.vocab, c.hidden, c.dtype));

  // Replicated projections: each drawn in fp32 on the CPU from a generator seeded by
  // (config.seed, parameter name) only, then cast, so every rank, world size and dtype agrees.
  // Norms start at one; router and experts are initialised by the MoE layer from config.seed.
  at::NoGradGuard no_grad;
  for (const auto& item : named_parameters(/*recurse=*/true)) {
    const std::string& name = item.key();
    at::Tensor p = item.value();
    if (is_expert_parameter(name) || name.find(".moe.router.") != std::string::npos ||
        name.find("norm.") != std::string::npos)
      continue;
    // The standard FNV-1a offset basis (core/hash.h's default differs; kept for its digests).
    at::Generator gen =
        at::detail::createCPUGenerator(mix(c.seed ^ fnv1a(name.data(), name.size(), 0xcbf29ce484222325ULL)));
    at::Tensor w = at::empty(p.sizes(), at::kFloat);
    if (name == "embed.weight") {
      w.normal_(0.0, 1.0, gen);  // as nn.Embedding; the first RMSNorm rescales anyway
    } else {
      const double bound = 1.0 / std::sqrt(static_cast<double>(p.size(1)));  // nn.Linear: ±1/√fan_in
      w.uniform_(-bound, bound, gen);
    }
    p.copy_(w);
  }

  // RoPE tables [max_seq, D] (rotate-half layout: the D/2 frequencies twice), built in fp64.
  const int64_t D = c.head_dim();
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor inv_freq = at::pow(c.rope_theta, at::arange(0, D, 2, f64) / static_cast<double>(D)).reciprocal();
  const at::Tensor angles = at::outer(at::arange(c.max_seq, f64), inv_freq);  // [max_seq, D/2]
  rope_cos_ = at::cat({angles, angles}, -1).cos().to(at::kFloat);
  rope_sin_ = at::cat({angles, angles}, -1).sin().to(at::kFloat);
}

KVCache TransformerLMImpl::new_cache(int64_t batch) const {
  TRUSTEP_CHECK(batch >= 1, "KV cache: batch must be >= 1, got {}", batch);
  KVCache cache;
  const auto opts = embed->weight.options().requires_grad(false);
  for (int64_t i = 0; i < config_.layers; ++i) {
    cache.k.push_back(at::zeros({batch, config_.kv_heads, config_.max_seq, config_.head_dim()}, opts));
    cache.v.push_back(at::zeros({batch, config_.kv_heads, config_.max_seq, config_.head_dim()}, opts));
  }
  return cache;
}

std::vector<MoELayer> TransformerLMImpl::moe_layers() const {
  std::vector<MoELayer> out;
  for (const Block& b : blocks_) out.push_back(b->moe);
  return out;
}

LMOutput TransformerLMImpl::forward(const at::Tensor& tokens, const RoutingHook& hook, KVCache* cache) {
  TRUSTEP_CHECK(tokens.defined() && tokens.dim() == 2 && tokens.scalar_type() == at::kLong,
                "transformer: tokens must be [B, S] int64, got {}",
                tokens.defined() ? fmt::format("[{}] {}", fmt::join(tokens.sizes(), ", "),
                                               dtype_name(tokens.scalar_type()))
                                 : "undefined");
  const int64_t B = tokens.size(0), S = tokens.size(1);
  TRUSTEP_CHECK(B >= 1 && S >= 1, "transformer: tokens must be non-empty, got [{}, {}]", B, S);
  const int64_t lo = tokens.min().item<int64_t>(), hi = tokens.max().item<int64_t>();
  TRUSTEP_CHECK(lo >= 0 && hi < config_.vocab, "transformer: token ids must be in [0, {}) (option '--vocab'), got {}",
                config_.vocab, lo < 0 ? lo : hi);
  const int64_t offset = cache != nullptr ? cache->length : 0;
  if (cache != nullptr) {
    TRUSTEP_CHECK(static_cast<int64_t>(cache->k.size()) == config_.layers && cache->batch() == B &&
                      cache->capacity() == config_.max_seq,
                  "transformer: KV cache does not match (cache batch {}, {} layers, capacity {}; tokens batch {}, "
                  "model {} layers, max_seq {}); make it with new_cache",
                  cache->batch(), cache->k.size(), cache->capacity(), B, config_.layers, config_.max_seq);
  }
  TRUSTEP_CHECK(offset + S <= config_.max_seq,
                "transformer: {} cached + {} new tokens exceed max_seq {} (option '--seq-len')", offset, S,
                config_.max_seq);

  const at::Tensor cos = rope_cos_.narrow(0, offset, S).to(tokens.device());  // [S, D]
  const at::Tensor sin = rope_sin_.narrow(0, offset, S).to(tokens.device());
  at::Tensor x = at::embedding(embed->weight, tokens);  // [B, S, H]
  LMOutput out;
  out.z_loss = at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(tokens.device()));
  out.balance_loss = out.z_loss.clone();
  for (size_t i = 0; i < blocks_.size(); ++i) {
    BlockOutput b = blocks_[i]->forward(x, cos, sin, offset, hook, cache ? &cache->k[i] : nullptr,
                                        cache ? &cache->v[i] : nullptr);
    x = b.hidden;
    out.z_loss = out.z_loss + b.moe.z_loss;
    out.balance_loss = out.balance_loss + b.moe.balance_loss;
    out.selections.push_back(std::move(b.moe.selection));
  }
  out.balance_loss = out.balance_loss / static_cast<double>(config_.layers);
  if (cache != nullptr) cache->length = offset + S;
  out.logits = lm_head->forward(norm->forward(x)).to(at::kFloat);  // [B, S, V]
  if (config_.check_finite)
    comm_.fail_together(
        [&] {
          TRUSTEP_CHECK(at::isfinite(out.logits).all().item<bool>(),
                        "transformer: LM logits contain NaN or Inf (rank {}): check the inputs and the learning rate",
                        comm_.rank());
        },
        "--check-finite");
  return out;
}

std::vector<int64_t> TransformerLMImpl::generate(const std::vector<int64_t>& prompt, int64_t max_new_tokens,
                                                 double temperature, uint64_t seed, int64_t stop_token,
                                                 const RoutingHook& hook) {
  // Every check depends on the arguments only, so all ranks fail together, before any collective.
  TRUSTEP_CHECK_AS(OptionError, !prompt.empty(), "generate: the prompt is empty");
  for (int64_t t : prompt)
    TRUSTEP_CHECK_AS(OptionError, t >= 0 && t < config_.vocab,
                     "generate: prompt token {} is outside [0, {}) (option '--vocab')", t, config_.vocab);
  if (max_new_tokens < 0) bad_option("--max-new-tokens", std::to_string(max_new_tokens), "must be >= 0");
  if (!(temperature >= 0) || !std::isfinite(temperature))
    bad_option("--temperature", fmt::format("{}", temperature), "must be >= 0 (0 = greedy)");
  if (stop_token < -1 || stop_token >= config_.vocab)
    bad_option("--stop-token", std::to_string(stop_token), fmt::format("must be -1 or in [0, {})", config_.vocab));
  const int64_t P = static_cast<int64_t>(prompt.size());
  // The last new token is never fed back, so the cache needs P + max_new_tokens - 1 positions.
  if (max_new_tokens > 0 && P + max_new_tokens - 1 > config_.max_seq)
    bad_option("--max-new-tokens", std::to_string(max_new_tokens),
               fmt::format("prompt ({} tokens) + new tokens - 1 exceeds max_seq {} (option '--seq-len')", P,
                           config_.max_seq));
  std::vector<int64_t> result;
  if (max_new_tokens == 0) return result;

  at::NoGradGuard no_grad;
  const at::Device device = embed->weight.device();
  at::Generator gen = at::detail::createCPUGenerator(seed);
  KVCache cache = new_cache(1);
  at::Tensor input = at::tensor(prompt, at::TensorOptions().dtype(at::kLong)).view({1, P}).to(device);
  while (true) {
    const at::Tensor logits = forward(input, hook, &cache).logits[0][-1].to(at::kCPU);  // [V] fp32
    int64_t token = 0;
    if (temperature == 0) {
      token = logits.argmax().item<int64_t>();
    } else {
      const at::Tensor probs = (logits.to(at::kDouble) / temperature).softmax(-1);  // [V]
      token = at::multinomial(probs, 1, false, gen).item<int64_t>();
    }
    // Rank 0's choice wins: ranks stay in lockstep even if their logits differ in the last bit.
    if (comm_.size() > 1) token = comm_.all_gather_i64({token}, "generate.token").front();
    result.push_back(token);
    if (token == stop_token || static_cast<int64_t>(result.size()) == max_new_tokens) break;
    input = at::tensor(std::vector<int64_t>{token}, at::TensorOptions().dtype(at::kLong)).view({1, 1}).to(device);
  }
  return result;
}

}  // namespace trustep::model

#include "core/error.h"
#include "model/transformer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/allclose.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/randint.h>
#include <gtest/gtest.h>
#include "tests/unit/test_util.h"

#include <algorithm>
#include <map>

namespace trustep::model {
namespace {

using trustep::testing::error_of;
using trustep::testing::make_self;

ModelConfig tiny(uint64_t seed = 1) {
  ModelConfig c;
  c.vocab = 50;
  c.hidden = 32;
  c.layers = 2;
  c.heads = 4;
  c.kv_heads = 2;
  c.ffn = 48;
  c.experts = 4;
  c.top_k = 2;
  c.max_seq = 16;
  c.seed = seed;
  return c;
}

at::Tensor random_tokens(int64_t B, int64_t S, int64_t vocab, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  return at::randint(vocab, {B, S}, gen, at::TensorOptions().dtype(at::kLong));
}

std::map<std::string, at::Tensor> params(TransformerLMImpl& m) {
  std::map<std::string, at::Tensor> out;
  for (const auto& p : m.named_parameters()) out[p.key()] = p.value().detach();
  return out;
}

TEST(Transformer, ShapesDtypesAndParameterNames) {
  auto comm = make_self();
  TransformerLMImpl model(tiny(), *comm);
  const at::Tensor tokens = random_tokens(2, 7, 50, 3);
  const LMOutput out = model.forward(tokens);
  EXPECT_EQ(out.logits.sizes(), (std::vector<int64_t>{2, 7, 50}));
  EXPECT_EQ(out.logits.scalar_type(), at::kFloat);
  EXPECT_EQ(out.z_loss.dim(), 0);
  EXPECT_EQ(out.balance_loss.dim(), 0);
  ASSERT_EQ(out.selections.size(), 2u);
  EXPECT_EQ(out.selections[1].experts.sizes(), (std::vector<int64_t>{14, 2}));

  const auto p = params(model);
  for (const char* name : {"embed.weight", "layers.0.attn_norm.weight", "layers.0.attn.q_proj.weight",
                           "layers.0.attn.k_proj.weight", "layers.0.attn.v_proj.weight", "layers.0.attn.o_proj.weight",
                           "layers.0.moe_norm.weight", "layers.1.moe.router.weight", "layers.1.moe.experts.gate",
                           "layers.1.moe.experts.up", "layers.1.moe.experts.down", "norm.weight", "lm_head.weight"})
    EXPECT_TRUE(p.count(name)) << name;
  EXPECT_EQ(p.at("layers.0.attn.k_proj.weight").sizes(), (std::vector<int64_t>{16, 32}));  // 2 kv heads × 8
  EXPECT_EQ(p.at("lm_head.weight").sizes(), (std::vector<int64_t>{50, 32}));
  EXPECT_TRUE(is_expert_parameter("layers.1.moe.experts.gate"));
  EXPECT_FALSE(is_expert_parameter("layers.1.moe.router.weight"));
  EXPECT_EQ(model.moe_layers().size(), 2u);
  EXPECT_EQ(model.moe(1)->config().layer, 1);
}

TEST(Transformer, IsCausal) {
  auto comm = make_self();
  TransformerLMImpl model(tiny(), *comm);
  at::NoGradGuard no_grad;
  const at::Tensor a = random_tokens(1, 10, 50, 4);
  at::Tensor b = a.clone();
  b[0][7] = (a[0][7].item<int64_t>() + 1) % 50;
  const at::Tensor la = model.forward(a).logits, lb = model.forward(b).logits;
  // Not bitwise: the changed token may join other experts' GEMMs, whose blocking then differs.
  const double before = (la.narrow(1, 0, 7) - lb.narrow(1, 0, 7)).abs().max().item<double>();
  const double at = (la.narrow(1, 7, 1) - lb.narrow(1, 7, 1)).abs().max().item<double>();
  EXPECT_LT(before, 1e-5);
  EXPECT_GT(at, 1e-2);
}

TEST(Transformer, KVCacheMatchesFullForward) {
  auto comm = make_self();
  for (int64_t kv_heads : {4, 2, 1}) {
    ModelConfig c = tiny();
    c.kv_heads = kv_heads;
    TransformerLMImpl model(c, *comm);
    at::NoGradGuard no_grad;
    const at::Tensor tokens = random_tokens(2, 16, 50, 5);
    const at::Tensor full = model.forward(tokens).logits;  // [2, 16, 50]
    KVCache cache = model.new_cache(2);
    // A prefill of 5, single tokens, then a chunk of 3 (masked path), then the rest.
    std::vector<at::Tensor> parts;
    int64_t pos = 0;
    for (int64_t n : {5, 1, 1, 3, 6}) {
      parts.push_back(model.forward(tokens.narrow(1, pos, n), {}, &cache).logits);
      pos += n;
      EXPECT_EQ(cache.length, pos);
    }
    const at::Tensor inc = at::cat(parts, 1);
    EXPECT_TRUE(at::allclose(inc, full, 1e-5, 1e-5)) << "kv_heads " << kv_heads << " max diff "
                                                     << (inc - full).abs().max().item<float>();
    // Full cache: one more token is a clear error naming the option.
    EXPECT_NE(error_of([&] { model.forward(tokens.narrow(1, 0, 1), {}, &cache); }).find("--seq-len"),
              std::string::npos);
  }
}

TEST(Transformer, InitialisationDependsOnTheSeedOnly) {
  auto comm = make_self();
  TransformerLMImpl a(tiny(7), *comm), b(tiny(7), *comm), c(tiny(8), *comm);
  const auto pa = params(a), pb = params(b), pc = params(c);
  for (const auto& [name, t] : pa) {
    EXPECT_TRUE(t.equal(pb.at(name))) << name;
    if (name.find("norm") == std::string::npos) EXPECT_FALSE(t.equal(pc.at(name))) << name;
  }
  // Distinct parameters of the same shape are drawn independently.
  EXPECT_FALSE(pa.at("layers.0.attn.q_proj.weight").equal(pa.at("layers.1.attn.q_proj.weight")));
  // bf16 parameters are the fp32 ones rounded.
  ModelConfig cb = tiny(7);
  cb.dtype = at::kBFloat16;
  TransformerLMImpl bf(cb, *comm);
  EXPECT_TRUE(params(bf).at("embed.weight").equal(pa.at("embed.weight").to(at::kBFloat16)));
}

TEST(Transformer, ValidateNamesTheOption) {
  auto bad = [](auto edit) {
    ModelConfig c = tiny();
    edit(c);
    return error_of<OptionError>([&] { c.validate(); });
  };
  EXPECT_EQ(bad([](ModelConfig&) {}), "no error");
  EXPECT_NE(bad([](ModelConfig& c) { c.vocab = 0; }).find("--vocab"), std::string::npos);
  EXPECT_NE(bad([](ModelConfig& c) { c.hidden = 0; }).find("--hidden"), std::string::npos);
  EXPECT_NE(bad([](ModelConfig& c) { c.layers = 0; }).find("--layers"), std::string::npos);
  EXPECT_NE(bad([](ModelConfig& c) { c.heads = 5; }).find("--heads"), std::string::npos);
  EXPECT_NE(bad([](ModelConfig& c) { c.heads = 32; }).find("--heads"), std::string::npos);  // head dim 1: odd
  EXPECT_NE(bad([](ModelConfig& c) { c.kv_heads = 3; }).find("--kv-heads"), std::string::npos);
  EXPECT_NE(bad([](ModelConfig& c) { c.ffn = 0; }).find("--ffn"), std::string::npos);
  EXPECT_NE(bad([](ModelConfig& c) { c.experts = 0; }).find("--experts"), std::string::npos);
  EXPECT_NE(bad([](ModelConfig& c) { c.top_k = 5; }).find("--top-k"), std::string::npos);
  EXPECT_NE(bad([](ModelConfig& c) { c.max_seq = 0; }).find("--seq-len"), std::string::npos);
  EXPECT_NE(bad([](ModelConfig& c) { c.dtype = at::kHalf; }).find("--dtype"), std::string::npos);
  EXPECT_NE(bad([](ModelConfig& c) { c.selector.alpha = 2; }).find("--alpha"), std::string::npos);
  auto comm = make_self();
  ModelConfig c = tiny();
  c.experts = 0;
  EXPECT_THROW(TransformerLMImpl(c, *comm), OptionError);
}

TEST(Transformer, ConfigJsonRoundTrip) {
  ModelConfig c = tiny(123456789012345ULL);
  c.dtype = at::kBFloat16;
  c.comm_dtype = at::kHalf;
  c.rope_theta = 5e5;
  c.norm_eps = 1e-5;
  c.check_finite = true;
  c.selector.mode = routing::SelectorMode::kTrustFirst;
  c.selector.overflow = routing::OverflowPolicy::kReroute;
  c.selector.alpha = 0.25;
  c.selector.epsilon = 0.1;
  c.selector.capacity_factor = 1.5;
  c.selector.substitute_min_trust = 0.3;
  c.selector.seed = 9;
  const nlohmann::json j = c.to_json();
  EXPECT_EQ(j.at("dtype"), "bf16");
  EXPECT_EQ(j.at("selector").at("mode"), "trust-first");
  const ModelConfig r = ModelConfig::from_json(nlohmann::json::parse(j.dump()));
  EXPECT_EQ(r.to_json(), j);
  EXPECT_EQ(r.seed, c.seed);
  EXPECT_EQ(r.selector.overflow, routing::OverflowPolicy::kReroute);
  EXPECT_EQ(r.selector.experts, 4);

  nlohmann::json missing = j;
  missing.erase("kv_heads");
  EXPECT_NE(error_of<OptionError>([&] { ModelConfig::from_json(missing); }).find("'kv_heads'"), std::string::npos);
  nlohmann::json bad_type = j;
  bad_type["hidden"] = "wide";
  EXPECT_NE(error_of<OptionError>([&] { ModelConfig::from_json(bad_type); }).find("'hidden'"), std::string::npos);
  nlohmann::json bad_mode = j;
  bad_mode["selector"]["mode"] = "oracle";
  EXPECT_NE(error_of<OptionError>([&] { ModelConfig::from_json(bad_mode); }).find("selector.mode"),
            std::string::npos);
  nlohmann::json bad_dtype = j;
  bad_dtype["comm_dtype"] = "fp7";
  EXPECT_NE(error_of<OptionError>([&] { ModelConfig::from_json(bad_dtype); }).find("'comm_dtype'"),
            std::string::npos);
  nlohmann::json invalid = j;
  invalid["heads"] = 5;
  EXPECT_NE(error_of<OptionError>([&] { ModelConfig::from_json(invalid); }).find("--heads"), std::string::npos);
}

TEST(Transformer, BackwardReachesEmbeddingAttentionRouterAndExperts) {
  auto comm = make_self();
  TransformerLMImpl model(tiny(), *comm);
  const at::Tensor tokens = random_tokens(2, 8, 50, 6);
  const LMOutput out = model.forward(tokens);
  const at::Tensor loss = out.logits.log_softmax(-1).mean().neg() + 0.01 * out.z_loss + 0.01 * out.balance_loss;
  loss.backward();
  for (const auto& p : model.named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0.0) << p.key();
  }
}

TEST(Transformer, RoutingHookSeesEachLayerInput) {
  auto comm = make_self();
  ModelConfig c = tiny();
  c.selector.mode = routing::SelectorMode::kBlend;
  c.selector.alpha = 0.0;  // trust only
  TransformerLMImpl model(c, *comm);
  std::vector<int> seen;
  // Trust favours experts 2 and 3 for every token: blend with alpha 0 must pick exactly them.
  const RoutingHook hook = [&](int layer, const at::Tensor& x) {
    seen.push_back(layer);
    EXPECT_EQ(x.sizes(), (std::vector<int64_t>{6, 32}));
    routing::SelectorInputs in;
    in.trust = at::tensor({0.1f, 0.2f, 0.9f, 0.8f}).repeat({x.size(0), 1});
    return in;
  };
  const LMOutput out = model.forward(random_tokens(2, 3, 50, 8), hook);
  EXPECT_EQ(seen, (std::vector<int>{0, 1}));
  for (const auto& s : out.selections) EXPECT_TRUE(std::get<0>(s.experts.sort(1)).eq(at::tensor({2L, 3L})).all().item<bool>());
}

TEST(Transformer, GenerateIsDeterministicAndStops) {
  auto comm = make_self();
  TransformerLMImpl model(tiny(), *comm);
  const std::vector<int64_t> prompt = {1, 2, 3, 4};
  const auto g1 = model.generate(prompt, 6, 0.0, 0);
  const auto g2 = model.generate(prompt, 6, 0.0, 99);  // greedy ignores the seed
  ASSERT_EQ(g1.size(), 6u);
  EXPECT_EQ(g1, g2);
  // Greedy equals argmax of a full forward over the growing sequence.
  std::vector<int64_t> seq = prompt;
  {
    at::NoGradGuard no_grad;
    for (int i = 0; i < 3; ++i) {
      const at::Tensor t = at::tensor(seq, at::TensorOptions().dtype(at::kLong)).view({1, -1});
      seq.push_back(model.forward(t).logits[0][-1].argmax().item<int64_t>());
    }
  }
  EXPECT_EQ(std::vector<int64_t>(seq.begin() + 4, seq.end()), std::vector<int64_t>(g1.begin(), g1.begin() + 3));
  // Stop token: generation ends at its first occurrence, which is included.
  const auto stopped = model.generate(prompt, 6, 0.0, 0, g1[2]);
  const size_t first = std::find(g1.begin(), g1.end(), g1[2]) - g1.begin();
  EXPECT_EQ(stopped, std::vector<int64_t>(g1.begin(), g1.begin() + first + 1));
  // Sampling: same seed, same tokens; all within the vocabulary.
  const auto s1 = model.generate(prompt, 8, 1.0, 42), s2 = model.generate(prompt, 8, 1.0, 42);
  EXPECT_EQ(s1, s2);
  for (int64_t t : s1) EXPECT_TRUE(t >= 0 && t < 50);
  EXPECT_TRUE(model.generate(prompt, 0, 0.0, 0).empty());
  // Fills the cache exactly: 4 + 13 - 1 = 16 positions; one more is an error naming options.
  EXPECT_EQ(model.generate(prompt, 13, 0.0, 0).size(), 13u);
  EXPECT_NE(error_of<OptionError>([&] { model.generate(prompt, 14, 0.0, 0); }).find("--seq-len"), std::string::npos);
  EXPECT_NE(error_of<OptionError>([&] { model.generate({1, 50}, 2, 0.0, 0); }).find("--vocab"), std::string::npos);
  EXPECT_NE(error_of<OptionError>([&] { model.generate(prompt, 2, -1.0, 0); }).find("--temperature"),
            std::string::npos);
}

TEST(Transformer, Bf16ForwardGivesFp32Logits) {
  auto comm = make_self();
  ModelConfig c = tiny();
  c.dtype = at::kBFloat16;
  c.comm_dtype = at::kBFloat16;
  TransformerLMImpl model(c, *comm);
  const LMOutput out = model.forward(random_tokens(2, 16, 50, 9));
  EXPECT_EQ(out.logits.scalar_type(), at::kFloat);
  EXPECT_TRUE(out.logits.isfinite().all().item<bool>());
  out.logits.mean().backward();
  EXPECT_TRUE(model.embed->weight.grad().defined());
  EXPECT_EQ(model.generate({1, 2}, 3, 0.0, 0).size(), 3u);
}

TEST(Transformer, RejectsBadTokens) {
  auto comm = make_self();
  TransformerLMImpl model(tiny(), *comm);
  EXPECT_NE(error_of([&] { model.forward(random_tokens(1, 17, 50, 1)); }).find("--seq-len"), std::string::npos);
  EXPECT_NE(error_of([&] { model.forward(random_tokens(1, 4, 50, 1) + 50); }).find("--vocab"), std::string::npos);
  EXPECT_NE(error_of([&] { model.forward(random_tokens(1, 4, 50, 1).to(at::kInt)); }).find("int64"),
            std::string::npos);
  KVCache wrong = model.new_cache(2);
  EXPECT_NE(error_of([&] { model.forward(random_tokens(1, 4, 50, 1), {}, &wrong); }).find("KV cache"),
            std::string::npos);
}

}  // namespace
}  // namespace trustep::model

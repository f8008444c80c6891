#include "cli/train_command.h"

#include "core/dtype.h"
#include "core/error.h"
#include "core/log.h"
#include "routing/context.h"
#include "routing/stats.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/model_state.h"
#include "trust/routing_state.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>

namespace trustep::cli {

namespace {

void check_positive(int64_t value, const char* option) {
  TRUSTEP_CHECK_AS(OptionError, value > 0, "invalid value '{}' for option '{}': must be > 0", value, option);
}

}  // namespace

train::TrainConfig validate(const TrainArgs& a, bool needs_out) {
  train::TrainConfig c;
  auto& m = c.model;
  m.vocab = train::kVocabSize;
  m.hidden = a.hidden;
  m.layers = a.layers;
  m.heads = a.heads;
  m.kv_heads = a.kv_heads;
  m.ffn = a.ffn;
  m.experts = a.experts;
  m.top_k = a.top_k;
  m.max_seq = a.seq_len;
  m.dtype = parse_dtype(a.dtype, "--dtype");
  TRUSTEP_CHECK_AS(OptionError, m.dtype == at::kFloat || m.dtype == at::kBFloat16,
                   "invalid value '{}' for option '--dtype': train takes fp32 or bf16", a.dtype);
  m.comm_dtype = a.comm_dtype.empty() ? m.dtype : parse_dtype(a.comm_dtype, "--comm-dtype");
  m.selector.mode = routing::parse_mode(a.mode, "--mode");
  m.selector.alpha = a.alpha;
  m.selector.epsilon = a.epsilon;
  m.selector.overflow = routing::parse_overflow(a.overflow, "--overflow");
  m.selector.capacity_factor = a.capacity_factor;
  m.selector.experts = a.experts;
  m.selector.top_k = a.top_k;
  m.selector.seed = a.seed;
  m.seed = a.seed;
  m.check_finite = a.check_finite;
  m.validate();
  m.selector.validate();

  c.context_source = train::parse_context_source(a.context_source, "--contexts-from");
  check_positive(a.contexts, "--contexts");
  c.contexts = a.contexts;
  c.trust.prior = a.trust_prior;
  c.trust.min_evidence = a.trust_min_evidence;
  c.trust.learning_rate = a.trust_lr;
  c.trust.experts = a.experts;
  c.trust.layers = a.layers;
  c.trust.validate();
  TRUSTEP_CHECK_AS(OptionError, a.trust_temperature > 0,
                   "invalid value '{}' for option '--trust-temperature': must be > 0", a.trust_temperature);
  c.trust_temperature = a.trust_temperature;
  c.trust_baseline = train::parse_trust_baseline(a.trust_baseline, "--trust-baseline");

  check_positive(a.steps, "--steps");
  check_positive(a.batch, "--batch");
  check_positive(a.log_every, "--log-every");
  TRUSTEP_CHECK_AS(OptionError, a.warmup >= 0 && a.warmup < a.steps,
                   "invalid value '{}' for option '--warmup': must be in [0, --steps = {})", a.warmup, a.steps);
  TRUSTEP_CHECK_AS(OptionError, a.lr > 0, "invalid value '{}' for option '--lr': must be > 0", a.lr);
  TRUSTEP_CHECK_AS(OptionError, a.min_lr >= 0 && a.min_lr <= a.lr,
                   "invalid value '{}' for option '--min-lr': must be in [0, --lr = {}]", a.min_lr, a.lr);
  TRUSTEP_CHECK_AS(OptionError, a.clip >= 0, "invalid value '{}' for option '--clip': must be >= 0", a.clip);
  TRUSTEP_CHECK_AS(OptionError, a.balance_coef >= 0,
                   "invalid value '{}' for option '--balance-coef': must be >= 0", a.balance_coef);
  TRUSTEP_CHECK_AS(OptionError, a.z_coef >= 0, "invalid value '{}' for option '--z-coef': must be >= 0", a.z_coef);
  c.steps = a.steps;
  c.warmup = a.warmup;
  c.batch = a.batch;
  c.lr = a.lr;
  c.min_lr = a.min_lr;
  c.clip = a.clip;
  c.balance_coef = a.balance_coef;
  c.z_coef = a.z_coef;
  c.seed = a.seed;
  c.adamw.weight_decay = a.weight_decay;
  c.adamw.beta1 = a.beta1;
  c.adamw.beta2 = a.beta2;
  c.adamw.validate();

  if (!a.data.empty()) {
    std::ifstream in(a.data, std::ios::binary);
    TRUSTEP_CHECK_AS(OptionError, in.good(), "invalid value '{}' for option '--data': cannot read the file", a.data);
  }
  c.data = a.data;

  if (!a.poison_expert.empty()) {
    for (const auto& word : parse_word_list(a.poison_expert, "--poison-expert")) {
      int64_t e = -1;
      try {
        size_t used = 0;
        e = std::stoll(word, &used);
        if (used != word.size()) e = -1;
      } catch (const std::exception&) {
        e = -1;
      }
      TRUSTEP_CHECK_AS(OptionError, e >= 0 && e < a.experts,
                       "invalid value '{}' for option '--poison-expert': '{}' is not an expert in [0, --experts = {})",
                       a.poison_expert, word, a.experts);
      c.poison_experts.push_back(e);
    }
  }
  TRUSTEP_CHECK_AS(OptionError, a.poison_from >= 0, "invalid value '{}' for option '--poison-from': must be >= 0",
                   a.poison_from);
  c.poison_from = a.poison_from;
  c.poison_kind = model::parse_poison_kind(a.poison_kind, "--poison-kind");

  if (needs_out) {
    TRUSTEP_CHECK_AS(OptionError, !a.out.empty(), "option '--out' needs a directory");
    std::error_code ec;
    std::filesystem::create_directories(a.out, ec);
    TRUSTEP_CHECK_AS(OptionError, !ec && std::filesystem::is_directory(a.out),
                     "invalid value '{}' for option '--out': cannot create the directory ({})", a.out, ec.message());
    c.out = a.out;
  }
  TRUSTEP_CHECK_AS(OptionError, a.checkpoint_every >= 0,
                   "invalid value '{}' for option '--checkpoint-every': must be >= 0", a.checkpoint_every);
  TRUSTEP_CHECK_AS(OptionError, a.keep_last >= 0, "invalid value '{}' for option '--keep-last': must be >= 0",
                   a.keep_last);
  TRUSTEP_CHECK_AS(OptionError, a.stop_after >= 0, "invalid value '{}' for option '--stop-after': must be >= 0",
                   a.stop_after);
  TRUSTEP_CHECK_AS(OptionError, a.trust_plot_layer >= 0 && a.trust_plot_layer < a.layers,
                   "invalid value '{}' for option '--trust-plot-layer': must be in [0, --layers = {})",
                   a.trust_plot_layer, a.layers);
  c.checkpoint_every = a.checkpoint_every;
  c.keep_last = a.keep_last;
  c.stop_after = a.stop_after;
  c.resume = a.resume;
  c.log_every = a.log_every;
  c.plots = !a.no_plots;
  c.trust_plot_layer = a.trust_plot_layer;
  check_positive(a.trace_steps, "--trace-steps");
  check_writable(a.trace, "--trace");
  c.trace = a.trace;
  c.trace_steps = a.trace_steps;
  return c;
}

void check_experts_split(const comm::Communicator& comm, const train::TrainConfig& config) {
  // Every rank evaluates the same condition, so the error is collective: a clean exit, no abort.
  if (config.model.experts % comm.size() != 0)
    throw OptionError(fmt::format("invalid value '{}' for option '--experts': must be a multiple of the world size "
                                  "({} ranks)",
                                  config.model.experts, comm.size()),
                      TRUSTEP_ORIGIN, /*collective=*/true);
}

int run_train_command(comm::Communicator& comm, const train::TrainConfig& config) {
  check_experts_split(comm, config);
  return train::run_train(comm, config);
}

// ---- infer ----------------------------------------------------------------------------------

void validate(const InferArgs& a) {
  TRUSTEP_CHECK_AS(OptionError, !a.checkpoint.empty(), "infer: option '--checkpoint' is required");
  TRUSTEP_CHECK_AS(OptionError, !a.prompt.empty(), "infer: option '--prompt' is required (non-empty text)");
  TRUSTEP_CHECK_AS(OptionError, a.max_new_tokens > 0, "invalid value '{}' for option '--max-new-tokens': must be > 0",
                   a.max_new_tokens);
  TRUSTEP_CHECK_AS(OptionError, a.temperature >= 0, "invalid value '{}' for option '--temperature': must be >= 0",
                   a.temperature);
  if (!a.mode.empty()) routing::parse_mode(a.mode, "--mode");
}

namespace {

// The context index of the prompt for label-trained models.
int64_t prompt_context(const InferArgs& a, const std::vector<std::string>& names) {
  if (a.context != "auto") {
    for (size_t i = 0; i < names.size(); ++i)
      if (names[i] == a.context) return static_cast<int64_t>(i);
    try {
      size_t used = 0;
      const int64_t c = std::stoll(a.context, &used);
      if (used == a.context.size() && c >= 0 && c < static_cast<int64_t>(names.size())) return c;
    } catch (const std::exception&) {
    }
    throw OptionError(fmt::format("invalid value '{}' for option '--context': expected one of {} or an index below {}",
                                  a.context, nlohmann::json(names).dump(), names.size()),
                      TRUSTEP_ORIGIN);
  }
  const int64_t guess = train::context_of_prompt(a.prompt);
  return guess >= 0 && guess < static_cast<int64_t>(names.size()) ? guess : 0;
}

// A checkpoint loaded under this world's expert layout, with the routing state it was saved with.
struct LoadedModel {
  model::ModelConfig config;
  model::TransformerLM lm{nullptr};
  std::unique_ptr<trust::TrustTable> trust;
  std::vector<routing::ContextClassifier> classifiers;  // kmeans contexts, per layer
  std::vector<std::string> context_names;
  int64_t label = -1;  // labels contexts: the prompt's
};

void load_model(comm::Communicator& comm, const InferArgs& a, LoadedModel& m) {
  const train::Checkpoint ck = train::Checkpoint::open(a.checkpoint);
  m.config = model::ModelConfig::from_json(ck.meta().at("model"));
  if (!a.mode.empty()) m.config.selector.mode = routing::parse_mode(a.mode, "--mode");
  TRUSTEP_CHECK_AS(OptionError, m.config.experts % comm.size() == 0,
                   "infer: the checkpoint's {} experts cannot be split over {} ranks", m.config.experts, comm.size());
  const auto& train_meta = ck.meta().at("train");
  const bool kmeans = train_meta.at("context_source") == "kmeans";
  const int64_t contexts = train_meta.at("contexts").get<int64_t>();
  m.context_names = train_meta.at("context_names").get<std::vector<std::string>>();

  m.lm = model::TransformerLM(m.config, comm);
  train::ModelParameters params(*m.lm, comm.rank());
  params.load(ck, nullptr);
  trust::TrustConfig tc;
  tc.layers = m.config.layers;
  tc.contexts = contexts;
  tc.experts = m.config.experts;
  m.trust = std::make_unique<trust::TrustTable>(tc, c10::Device(c10::kCPU));
  trust::RoutingStateRefs refs;
  refs.trust = m.trust.get();
  for (int64_t l = 0; kmeans && l < m.config.layers; ++l) {
    routing::ContextConfig cc;
    cc.contexts = contexts;
    cc.dim = m.config.hidden;
    m.classifiers.emplace_back(cc, c10::Device(c10::kCPU), m.config.dtype);
  }
  for (auto& c : m.classifiers) refs.contexts.push_back(&c);
  trust::load_routing_state(ck.file("routing.safetensors"), refs);
  if (!kmeans) m.label = prompt_context(a, m.context_names);
}

}  // namespace

int run_infer(comm::Communicator& comm, const InferArgs& a) {
  LoadedModel m;
  comm.fail_together([&] { load_model(comm, a, m); }, "infer: --checkpoint " + a.checkpoint);
  const model::ModelConfig& config = m.config;
  const bool kmeans = !m.classifiers.empty();
  const model::RoutingHook hook = [&](int layer, const at::Tensor& x) {
    const at::Tensor ctx = kmeans ? m.classifiers[static_cast<size_t>(layer)].classify(x.detach())
                                  : at::full({x.size(0)}, m.label, at::kLong);
    routing::SelectorInputs in;
    routing::fill_context_trust(in, m.trust->effective(layer), m.trust->evidenced_experts(layer), ctx, config.top_k);
    return in;
  };
  std::vector<int64_t> prompt{train::kBos};
  for (unsigned char ch : a.prompt) prompt.push_back(ch);
  // Every rank evaluates the same condition, so these errors are collective (no abort).
  const int64_t room = config.max_seq - static_cast<int64_t>(prompt.size()) + 1;
  if (room < 1)
    throw OptionError(fmt::format("invalid value for option '--prompt': {} tokens with BOS exceed the model's context "
                                  "of {} tokens (--seq-len it was trained with)",
                                  prompt.size(), config.max_seq),
                      TRUSTEP_ORIGIN, /*collective=*/true);
  const int64_t max_new = std::min(a.max_new_tokens, room);
  if (max_new < a.max_new_tokens && comm.rank() == 0)
    log::warn("infer: generating at most {} tokens: the model's context is {} tokens", max_new, config.max_seq);

  c10::NoGradGuard no_grad;
  model::TransformerLM& lm = m.lm;
  lm->eval();
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<int64_t> out = lm->generate(prompt, max_new, a.temperature, a.seed, train::kEos, hook);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (comm.rank() == 0) {
    std::string text;
    for (int64_t t : out)
      if (t < 256) text.push_back(static_cast<char>(t));
    fmt::print("{}{}\n", a.prompt, text);
    fmt::print(stderr, "infer: {} new tokens in {:.3f} s ({:.1f} tokens/s, prompt {} tokens, {} ranks, context {})\n",
               out.size(), s, static_cast<double>(out.size()) / std::max(s, 1e-9), prompt.size(), comm.size(),
               kmeans ? "kmeans" : m.context_names[static_cast<size_t>(m.label)]);
  }
  return 0;
}

}  // namespace trustep::cli

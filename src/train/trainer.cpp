#include "train/trainer.h"

#include "core/dtype.h"
#include "core/error.h"
#include "core/log.h"
#include "core/trace.h"
#include "routing/context.h"
#include "routing/stats.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/model_state.h"
#include "trust/routing_state.h"
#include "trustep_paths.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

namespace trustep::train {
namespace fs = std::filesystem;

ContextSource parse_context_source(const std::string& name, const std::string& option) {
  if (name == "labels") return ContextSource::kLabels;
  if (name == "kmeans") return ContextSource::kKMeans;
  throw OptionError(fmt::format("invalid value '{}' for option '{}': expected labels or kmeans", name, option),
                    TRUSTEP_ORIGIN);
}

const char* context_source_name(ContextSource source) {
  return source == ContextSource::kLabels ? "labels" : "kmeans";
}

TrustBaseline parse_trust_baseline(const std::string& name, const std::string& option) {
  if (name == "context") return TrustBaseline::kContext;
  if (name == "context-target") return TrustBaseline::kContextTarget;
  throw OptionError(fmt::format("invalid value '{}' for option '{}': expected context or context-target", name, option),
                    TRUSTEP_ORIGIN);
}

const char* trust_baseline_name(TrustBaseline baseline) {
  return baseline == TrustBaseline::kContext ? "context" : "context-target";
}

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string format_duration(double s) {
  const auto total = static_cast<int64_t>(std::max(0.0, s) + 0.5);
  return total >= 3600 ? fmt::format("{}:{:02}:{:02}", total / 3600, total / 60 % 60, total % 60)
                       : fmt::format("{}:{:02}", total / 60, total % 60);
}

// What one step measured, identical on every rank (reduced).
struct StepMetrics {
  double loss = 0, lm_loss = 0, balance_loss = 0, z_loss = 0, grad_norm = 0, lr = 0;
  at::Tensor load;     // [L, E] fp64 slots per expert, all ranks
  at::Tensor counters; // [L, 6] fp64: substituted, unfilled, dropped, rerouted, trust_routed, explored
};

}  // namespace

class Trainer::Impl {
 public:
  Impl(comm::Communicator& comm, const TrainConfig& config)
      : comm_(comm), config_(config), optimizer_(config.adamw) {
    DataConfig data_config;
    data_config.batch = config.batch;
    data_config.seq_len = config.model.max_seq;
    data_config.seed = config.seed;
    data_config.rank = comm.rank();
    data_config.world = comm.size();
    data_ = config.data.empty() ? make_synthetic(data_config) : make_text(data_config, config.data);
    contexts_ = config.context_source == ContextSource::kLabels ? data_->contexts() : config.contexts;
    context_names_ = config.context_source == ContextSource::kLabels ? data_->context_names()
                                                                     : std::vector<std::string>();
    for (int64_t c = static_cast<int64_t>(context_names_.size()); c < contexts_; ++c)
      context_names_.push_back(fmt::format("cluster{}", c));

    model_ = model::TransformerLM(config.model, comm);
    const int64_t L = config.model.layers;
    trust::TrustConfig tc = config.trust;
    tc.layers = L;
    tc.contexts = contexts_;
    tc.experts = config.model.experts;
    trust_ = std::make_unique<trust::TrustTable>(tc, c10::Device(c10::kCPU));
    if (config.context_source == ContextSource::kKMeans) {
      for (int64_t l = 0; l < L; ++l) {
        routing::ContextConfig cc;
        cc.contexts = contexts_;
        cc.dim = config.model.hidden;
        cc.seed = config.seed * 31 + static_cast<uint64_t>(l);
        classifiers_.emplace_back(cc, c10::Device(c10::kCPU), config.model.dtype);
      }
    }
    params_ = ModelParameters(*model_, comm.rank());
    for (auto& p : params_.replicated) optimizer_.add(p.name, p.tensor, p.decay);
    for (auto& p : params_.experts) optimizer_.add(p.name, p.tensor, true);
    routing_totals_ = at::zeros({L, config.model.experts + 6}, at::kDouble);
  }

  int run() {
    const fs::path out(config_.out);
    const fs::path metrics_path = out / "metrics.jsonl";
    const fs::path checkpoints = out / "checkpoints";
    int64_t start = 0;
    const std::string resume = resolve_resume(checkpoints);
    if (!resume.empty()) comm_.fail_together([&] { start = load(resume); }, "train: --resume " + resume);
    if (comm_.rank() == 0) open_metrics(metrics_path, start);

    const int64_t L = config_.model.layers;
    log::info("train: {} layers, hidden {}, {} experts (top-{}, {} per rank), {} contexts from {}, mode {}, dtype {}, "
              "{} ranks x {} sequences x {} tokens per step, steps {} → {}",
              L, config_.model.hidden, config_.model.experts, config_.model.top_k,
              config_.model.experts / comm_.size(), contexts_, context_source_name(config_.context_source),
              routing::mode_name(config_.model.selector.mode), dtype_name(config_.model.dtype), comm_.size(),
              config_.batch, config_.model.max_seq, start, config_.steps);

    const auto t0 = Clock::now();
    const int64_t tokens_per_step = config_.batch * config_.model.max_seq * comm_.size();
    // --trace: the last trace_steps steps of this run (warmed up), on every rank.
    const int64_t end = config_.stop_after > 0 ? std::min(config_.steps, start + config_.stop_after) : config_.steps;
    const int64_t trace_from = config_.trace.empty() ? end : std::max(start, end - config_.trace_steps);
    int64_t last = start;
    double last_loss = 0;
    for (int64_t step = start; step < config_.steps; ++step) {
      if (!config_.trace.empty() && step == trace_from) start_trace(comm_);
      const auto ts = Clock::now();
      const StepMetrics m = step_once(step);
      const double step_s = seconds_since(ts);
      last = step + 1;
      last_loss = m.loss;
      if (comm_.rank() == 0) {
        const double elapsed = seconds_since(t0);
        const double tps = static_cast<double>(tokens_per_step * (last - start)) / std::max(elapsed, 1e-9);
        write_step_record(step, m, static_cast<double>(tokens_per_step) / std::max(step_s, 1e-9), elapsed);
        if (step == start || last % config_.log_every == 0 || last == config_.steps) {
          const double eta = static_cast<double>(config_.steps - last) * elapsed / static_cast<double>(last - start);
          fmt::print("step {:>6}/{} | loss {:.4f} (lm {:.4f}) | lr {:.2e} | |g| {:.3f} | {:.0f} tok/s | ETA {}\n",
                     last, config_.steps, m.loss, m.lm_loss, m.lr, m.grad_norm, tps, format_duration(eta));
          std::fflush(stdout);
        }
      }
      const bool stop_early = config_.stop_after > 0 && last - start >= config_.stop_after && last < config_.steps;
      if (stop_early || (config_.checkpoint_every > 0 && last % config_.checkpoint_every == 0 && last < config_.steps))
        save(checkpoints, last, m.loss);
      if (stop_early) {
        if (!config_.trace.empty()) write_trace(comm_, config_.trace, "trustep train");
        if (comm_.rank() == 0) log::info("train: stopped after {} steps of this run (--stop-after)", last - start);
        return 0;
      }
    }
    if (!config_.trace.empty()) write_trace(comm_, config_.trace, "trustep train");
    const double wall = seconds_since(t0);
    if (last > start || resume.empty()) save(checkpoints, last, last_loss);
    trust_->check_consistent(comm_);
    for (const auto& c : classifiers_) c.check_consistent(comm_);
    if (comm_.rank() == 0) {
      const double tps = static_cast<double>(tokens_per_step * (last - start)) / std::max(wall, 1e-9);
      write_final_record(wall, tps, last);
      metrics_.close();
      fmt::print("train: {} steps in {:.1f} s, {:.0f} tokens/s, final loss {:.4f}; metrics {}\n", last - start, wall,
                 tps, last_loss, metrics_path.string());
      if (config_.plots) render_plots(metrics_path);
    }
    return 0;
  }

  // One optimisation step; every rank calls it with its own shard of the data.
  StepMetrics step_once(int64_t step) {
    trace::set_step(step);
    trace::Scope span("train.step");
    const int64_t L = config_.model.layers, E = config_.model.experts, k = config_.model.top_k;
    std::optional<trace::Scope> phase(std::in_place, "train.data");
    const Batch batch = data_->batch(step);
    const int64_t T = batch.tokens.numel();
    const at::Tensor label_ctx = batch.context.unsqueeze(1).expand(batch.tokens.sizes()).reshape({T});

    const bool poisoned = !config_.poison_experts.empty() && step >= config_.poison_from;
    for (int64_t l = 0; l < L; ++l) {
      auto& moe = model_->moe(l);
      moe->reseed_selector(config_.seed * 7919 + static_cast<uint64_t>(step * L + l));
      if (poisoned)
        moe->set_poison(config_.poison_experts, config_.seed * 1000003 + static_cast<uint64_t>(step), config_.poison_kind);
      else
        moe->clear_poison();
    }

    std::vector<at::Tensor> layer_ctx(static_cast<size_t>(L));
    const model::RoutingHook hook = [&](int layer, const at::Tensor& x) {
      at::Tensor ctx = classifiers_.empty() ? label_ctx : classifiers_[static_cast<size_t>(layer)].update(x.detach(), comm_);
      layer_ctx[static_cast<size_t>(layer)] = ctx;
      routing::SelectorInputs in;
      routing::fill_context_trust(in, trust_->effective(layer), trust_->evidenced_experts(layer), ctx, k);
      return in;
    };

    model_->zero_grad();
    phase.emplace("train.forward");
    const model::LMOutput out = model_->forward(batch.tokens, hook);
    const int64_t V = out.logits.size(-1);
    // Per-token loss [T] fp32; padding does not count.
    const at::Tensor nll = -at::log_softmax(out.logits.reshape({T, V}), -1)
                                .gather(1, batch.targets.reshape({T, 1}))
                                .squeeze(1);
    const at::Tensor mask = batch.mask.reshape({T});
    const at::Tensor lm_sum = (nll * mask.to(at::kFloat)).sum();
    // The loss is the mean over every rank's counted tokens: replicated gradients are then
    // plain sums over ranks, and expert gradients (which already collect every rank's tokens
    // through the backward exchange) need no rescaling. Aux losses are per-rank means: / W.
    at::Tensor counted = mask.sum().to(at::kLong).reshape({1});
    comm_.all_reduce(counted, comm::ReduceOp::kSum, "train.tokens");
    const double global_tokens = static_cast<double>(std::max<int64_t>(1, counted.item<int64_t>()));
    const double W = comm_.size();
    const at::Tensor loss = lm_sum / global_tokens +
                            (config_.balance_coef * out.balance_loss + config_.z_coef * out.z_loss) / W;
    phase.emplace("train.backward");
    loss.backward();

    phase.emplace("train.allreduce");
    // One all-reduce for the replicated gradients and everything the step reports.
    std::vector<at::Tensor> pieces;
    for (auto& p : params_.replicated) {
      const at::Tensor g = p.tensor.grad();
      pieces.push_back(g.defined() ? g.to(at::kFloat).reshape({-1}) : at::zeros({p.tensor.numel()}, at::kFloat));
    }
    at::Tensor expert_sq = at::zeros({1}, at::kDouble);
    for (auto& p : params_.experts) {
      const at::Tensor g = p.tensor.grad();
      if (g.defined()) expert_sq += g.to(at::kDouble).pow(2).sum();
    }
    at::Tensor report = at::zeros({4 + L * (E + 6)}, at::kDouble);
    report[0] = expert_sq.item<double>();
    report[1] = lm_sum.item<double>();
    report[2] = out.balance_loss.item<double>();
    report[3] = out.z_loss.item<double>();
    for (int64_t l = 0; l < L; ++l) {
      const auto& c = out.selections[static_cast<size_t>(l)].counts;
      const int64_t base = 4 + l * (E + 6);
      report.slice(0, base, base + E).copy_(c.load.to(at::kDouble));
      report.slice(0, base + E, base + E + 6)
          .copy_(at::stack({c.substituted, c.unfilled, c.dropped, c.rerouted, c.trust_routed, c.explored})
                     .to(at::kDouble));
    }
    // Gradients and report share one fp64 message (fp32 gradients are exact in fp64).
    at::Tensor grads = pieces.empty() ? at::zeros({0}, at::kFloat) : at::cat(pieces);
    const int64_t n_grads = grads.numel();
    at::Tensor flat = at::cat({grads.to(at::kDouble), report});
    comm_.all_reduce(flat, comm::ReduceOp::kSum, "train.grads");
    grads = flat.slice(0, 0, n_grads).to(at::kFloat);
    report = flat.slice(0, n_grads);

    // Global norm: every rank's expert part plus the replicated gradients (identical everywhere),
    // summed per parameter in a fixed order; one host copy for all the partial sums.
    phase.emplace("train.optimizer");
    StepMetrics m;
    std::vector<at::Tensor> partial;
    int64_t offset = 0;
    for (size_t i = 0; i < params_.replicated.size(); ++i) {
      const at::Tensor& t = params_.replicated[i].tensor;
      const at::Tensor g = grads.slice(0, offset, offset + t.numel());
      partial.push_back(g.to(at::kDouble).pow(2).sum());
      optimizer_.slots()[i].grad = g.view(t.sizes());
      offset += t.numel();
    }
    double sq = report[0].item<double>();
    if (!partial.empty()) {
      const at::Tensor sums = at::stack(partial).cpu();
      for (int64_t i = 0; i < sums.numel(); ++i) sq += sums.data_ptr<double>()[i];
    }
    m.grad_norm = std::sqrt(sq);
    const double scale = config_.clip > 0 && m.grad_norm > config_.clip ? config_.clip / (m.grad_norm + 1e-6) : 1.0;
    m.lr = warmup_cosine_lr(step, config_.warmup, config_.steps, config_.lr, config_.min_lr);
    optimizer_.step(m.lr, scale);

    m.lm_loss = report[1].item<double>() / global_tokens;
    m.balance_loss = report[2].item<double>() / W;
    m.z_loss = report[3].item<double>() / W;
    m.loss = m.lm_loss + config_.balance_coef * m.balance_loss + config_.z_coef * m.z_loss;
    // The loss is reduced, hence the same on every rank: all stop here together, before a NaN
    // reaches the trust table or a checkpoint.
    if (!std::isfinite(m.loss) || !std::isfinite(m.grad_norm))
      throw Error(fmt::format("train: step {}: the loss is {} and the gradient norm {} (not finite); the weights of "
                              "this step were not saved (the last checkpoint is intact); rerun with --check-finite "
                              "to stop at the first layer that goes bad [on every rank]",
                              step + 1, m.loss, m.grad_norm),
                  TRUSTEP_ORIGIN, /*collective=*/true);
    const at::Tensor per_layer = report.slice(0, 4).view({L, E + 6});
    m.load = per_layer.slice(1, 0, E);
    m.counters = per_layer.slice(1, E, E + 6);
    routing_totals_ += per_layer;

    phase.emplace("train.trust");
    update_trust(nll.detach(), mask, batch.targets.reshape({T}), label_ctx, layer_ctx, out.selections);
    return m;
  }

  int64_t tokens_per_step() const { return config_.batch * config_.model.max_seq * comm_.size(); }

 private:
  // Credits each (layer, context, expert) a token used with the token's quality, then applies
  // the step on every rank (docs/trust-model.md).
  void update_trust(const at::Tensor& nll, const at::Tensor& mask, const at::Tensor& targets,
                    const at::Tensor& label_ctx, const std::vector<at::Tensor>& layer_ctx,
                    const std::vector<routing::Selection>& selections) {
    c10::NoGradGuard no_grad;
    const at::Tensor idx = mask.nonzero().squeeze(1);
    const at::Tensor loss = nll.index_select(0, idx);
    const at::Tensor target = targets.index_select(0, idx);
    // Quality of every counted token against the mean loss of its baseline bucket (all ranks).
    const int64_t V = config_.model.vocab;
    const bool by_target = config_.trust_baseline == TrustBaseline::kContextTarget;
    auto quality_of = [&](const at::Tensor& ctx) {
      return by_target ? trust::token_quality(loss, ctx * V + target, contexts_ * V, config_.trust_temperature, &comm_)
                       : trust::token_quality(loss, ctx, contexts_, config_.trust_temperature, &comm_);
    };
    at::Tensor quality;
    if (classifiers_.empty()) quality = quality_of(label_ctx.index_select(0, idx));
    for (size_t l = 0; l < selections.size(); ++l) {
      const at::Tensor ctx = layer_ctx[l].index_select(0, idx);
      const at::Tensor q = classifiers_.empty() ? quality : quality_of(ctx);
      trust_->credit(static_cast<int64_t>(l), ctx, selections[l].experts.index_select(0, idx),
                     selections[l].weights.detach().index_select(0, idx), q);
    }
    trust_->apply_step(comm_);
  }

  std::string resolve_resume(const fs::path& checkpoints) const {
    if (config_.resume.empty()) return {};
    if (config_.resume != "auto") return config_.resume;
    return fs::exists(checkpoints / "latest") ? checkpoints.string() : std::string();
  }

  trust::RoutingStateRefs routing_refs() {
    trust::RoutingStateRefs refs;
    refs.trust = trust_.get();
    for (auto& c : classifiers_) refs.contexts.push_back(&c);
    return refs;
  }

  nlohmann::json meta(int64_t step, double loss) const {
    nlohmann::json j;
    j["model"] = config_.model.to_json();
    j["train"] = {{"seed", config_.seed},
                  {"batch", config_.batch},
                  {"steps", config_.steps},
                  {"data", config_.data.empty() ? "synthetic" : config_.data},
                  {"context_source", context_source_name(config_.context_source)},
                  {"contexts", contexts_},
                  {"context_names", context_names_},
                  {"trust_baseline", trust_baseline_name(config_.trust_baseline)},
                  {"poison_experts", config_.poison_experts},
                  {"poison_from", config_.poison_from},
                  {"poison_kind", model::poison_kind_name(config_.poison_kind)}};
    j["step"] = step;
    j["loss"] = loss;
    j["world_size"] = comm_.size();
    j["optimizer_steps"] = optimizer_.steps();
    // Routing totals since step 0, all ranks: load per expert and the selector's counters.
    const at::Tensor totals = routing_totals_.to(at::kLong);
    nlohmann::json layers = nlohmann::json::array();
    for (int64_t l = 0; l < totals.size(0); ++l) {
      const at::Tensor row = totals[l];
      const int64_t E = config_.model.experts;
      std::vector<int64_t> load(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + E);
      layers.push_back({{"load", load},
                        {"substituted", row[E].item<int64_t>()},
                        {"unfilled", row[E + 1].item<int64_t>()},
                        {"dropped", row[E + 2].item<int64_t>()},
                        {"rerouted", row[E + 3].item<int64_t>()},
                        {"trust_routed", row[E + 4].item<int64_t>()},
                        {"explored", row[E + 5].item<int64_t>()}});
    }
    j["routing"] = layers;
    return j;
  }

  void save(const fs::path& root, int64_t step, double loss) {
    trace::Scope span("train.checkpoint");
    CheckpointContents c;
    c.step = step;
    c.meta = meta(step, loss);
    c.replicated = params_.replicated_state(optimizer_);
    c.replicated["train.routing_totals"] = routing_totals_.clone();
    c.sharded = params_.sharded_state(optimizer_);
    auto refs = routing_refs();
    c.rank0_files["routing.safetensors"] = [refs](const std::string& path) {
      trust::save_routing_state(path, refs);
    };
    const std::string dir = save_checkpoint(comm_, root.string(), c, SaveOptions{static_cast<int>(config_.keep_last)});
    if (comm_.rank() == 0) log::info("train: checkpoint {}", dir);
  }

  // Restores everything a step depends on; returns the step to continue from.
  int64_t load(const std::string& path) {
    const Checkpoint ck = Checkpoint::open(path);
    check_same_model(ck, config_.model, path);
    const auto& train = ck.meta().at("train");
    TRUSTEP_CHECK_AS(OptionError, train.at("context_source") == context_source_name(config_.context_source) &&
                                      train.at("contexts").get<int64_t>() == contexts_,
                     "--resume {}: the checkpoint's contexts ({} {}) differ from this run's ({} {})", path,
                     train.at("contexts").dump(), train.at("context_source").dump(), contexts_,
                     context_source_name(config_.context_source));
    params_.load(ck, &optimizer_);
    const TensorMap rep = ck.load_replicated([](const std::string& n) { return n == "train.routing_totals"; });
    if (auto it = rep.find("train.routing_totals"); it != rep.end() && it->second.sizes() == routing_totals_.sizes())
      routing_totals_.copy_(it->second);
    trust::load_routing_state(ck.file("routing.safetensors"), routing_refs());
    optimizer_.set_steps(ck.meta().at("optimizer_steps").get<int64_t>());
    if (comm_.rank() == 0)
      log::info("train: resumed from {} at step {} (written by {} ranks, now {})", ck.dir(), ck.step(),
                ck.world_size(), comm_.size());
    return ck.step();
  }

  void open_metrics(const fs::path& path, int64_t start) {
    fs::create_directories(path.parent_path().empty() ? fs::path(".") : path.parent_path());
    // On resume keep the records of the steps before `start`, so the file reads as one run.
    std::vector<std::string> kept;
    if (start > 0) {
      std::ifstream in(path);
      for (std::string line; std::getline(in, line);) {
        const auto j = nlohmann::json::parse(line, nullptr, false);
        if (!j.is_discarded() && j.value("type", "") == "step" && j.value("step", int64_t{-1}) < start)
          kept.push_back(line);
      }
    }
    metrics_.open(path, std::ios::trunc);
    TRUSTEP_CHECK(metrics_.good(), "train: cannot write metrics file '{}'", path.string());
    for (const auto& line : kept) metrics_ << line << '\n';
    metrics_.flush();
  }

  void write_step_record(int64_t step, const StepMetrics& m, double tokens_per_s, double elapsed) {
    const int64_t L = config_.model.layers;
    nlohmann::json j;
    j["type"] = "step";
    j["step"] = step;
    j["loss"] = m.loss;
    j["lm_loss"] = m.lm_loss;
    j["balance_loss"] = m.balance_loss;
    j["z_loss"] = m.z_loss;
    j["lr"] = m.lr;
    j["grad_norm"] = m.grad_norm;
    j["tokens_per_s"] = tokens_per_s;
    j["elapsed_s"] = elapsed;
    const at::Tensor share = m.load / m.load.sum(1, true).clamp_min(1);
    nlohmann::json load = nlohmann::json::array();
    for (int64_t l = 0; l < L; ++l) {
      const at::Tensor row = share[l].contiguous();
      load.push_back(std::vector<double>(row.data_ptr<double>(), row.data_ptr<double>() + row.numel()));
    }
    j["load"] = load;
    const at::Tensor counters = m.counters.sum(0);
    j["substituted"] = counters[0].item<double>();
    j["dropped"] = counters[2].item<double>();
    nlohmann::json poison = nlohmann::json::array();
    for (int64_t e : config_.poison_experts) {
      double trust_sum = 0;
      for (int64_t l = 0; l < L; ++l) trust_sum += trust_->effective(l).select(1, e).mean().item<double>();
      poison.push_back({{"expert", e},
                        {"share", share.select(1, e).mean().item<double>()},
                        {"trust", trust_sum / static_cast<double>(L)}});
    }
    j["poison"] = poison;
    metrics_ << j.dump() << '\n';
    metrics_.flush();
  }

  void write_final_record(double wall, double tokens_per_s, int64_t steps) {
    const int64_t layer = std::min(config_.trust_plot_layer, config_.model.layers - 1);
    auto rows = [](const at::Tensor& t) {
      nlohmann::json out = nlohmann::json::array();
      const at::Tensor c = t.to(at::kDouble).contiguous();
      for (int64_t i = 0; i < c.size(0); ++i)
        out.push_back(std::vector<double>(c[i].data_ptr<double>(), c[i].data_ptr<double>() + c.size(1)));
      return out;
    };
    nlohmann::json j;
    j["type"] = "final";
    j["mode"] = routing::mode_name(config_.model.selector.mode);
    j["trust_layer"] = layer;
    j["trust"] = rows(trust_->trust()[layer]);
    j["evidence"] = rows(trust_->evidence()[layer]);
    j["context_names"] = context_names_;
    j["poison_experts"] = config_.poison_experts;
    j["wall_s"] = wall;
    j["tokens_per_s"] = tokens_per_s;
    j["steps"] = steps;
    metrics_ << j.dump() << '\n';
  }

  // matplotlib through the project's script; a missing Python is a warning, not a failure.
  void render_plots(const fs::path& metrics) const {
    const char* env_python = std::getenv("TRUSTEP_PYTHON");
    const std::string python = env_python ? env_python : TRUSTEP_DEFAULT_PYTHON;
    const std::string script = std::string(TRUSTEP_SOURCE_DIR) + "/scripts/plot_train.py";
    const std::string cmd = fmt::format("'{}' '{}' '{}' --out '{}'", python, script, metrics.string(),
                                        metrics.parent_path().empty() ? "." : metrics.parent_path().string());
    const int rc = std::system(cmd.c_str());
    if (rc != 0)
      log::warn("train: plotting failed ({}); run it by hand: {}", rc, cmd);
  }

  comm::Communicator& comm_;
  TrainConfig config_;
  std::unique_ptr<DataSource> data_;
  int64_t contexts_ = 1;
  std::vector<std::string> context_names_;
  model::TransformerLM model_{nullptr};
  std::unique_ptr<trust::TrustTable> trust_;
  std::vector<routing::ContextClassifier> classifiers_;
  ModelParameters params_;
  AdamW optimizer_;
  at::Tensor routing_totals_;  // [L, E + 6] fp64: load per expert, then the selector's counters
  std::ofstream metrics_;
};

Trainer::Trainer(comm::Communicator& comm, const TrainConfig& config) {
  comm.fail_together([&] { impl_ = std::make_unique<Impl>(comm, config); }, "train: setup");
}
Trainer::~Trainer() = default;
int Trainer::run() { return impl_->run(); }
void Trainer::step(int64_t step) { (void)impl_->step_once(step); }
int64_t Trainer::tokens_per_step() const { return impl_->tokens_per_step(); }

int run_train(comm::Communicator& comm, const TrainConfig& config) { return Trainer(comm, config).run(); }

void start_trace(comm::Communicator& comm) {
  // Device work would otherwise show up in whichever span happens to wait for it.
  if (std::string(comm.name()) == "nccl") trace::set_sync([&comm] { comm.synchronize(); });
  trace::clear();
  comm.barrier("trace.origin");
  trace::set_origin();
  trace::enable(true);
}

void write_trace(comm::Communicator& comm, const std::string& path, const std::string& title) {
  trace::enable(false);
  trace::set_sync({});
  const auto events = comm.all_gather_text(trace::chrome_events(trace::spans(), comm.rank()), "trace.gather");
  comm.fail_together(
      [&] {
        if (comm.rank() != 0) return;
        std::ofstream out(path, std::ios::trunc);
        out << trace::chrome_document(events, title);
        out.close();
        TRUSTEP_CHECK(out.good(), "cannot write trace file '{}'", path);
      },
      "--trace " + path);
  if (comm.rank() == 0) log::info("trace: wrote {} (open in ui.perfetto.dev or chrome://tracing)", path);
}

}  // namespace trustep::train

#include "trust/trust_table.h"

#include "core/dtype.h"
#include "core/error.h"
#include "core/hash.h"

#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <fmt/ranges.h>

#include <cmath>
#include <vector>

namespace trustep::trust {
namespace {

// Rejection counters per layer, in the order of TrustTable::rejected()'s columns.
constexpr const char* kRejectedWhat[3] = {"a context outside [0, C)", "an expert outside [-1, E)",
                                          "a weight or quality outside [0, 1] (or NaN)"};
// Per cell and step, summed over ranks: beyond this many uses the int64 sums of 2^32-scaled
// weights could overflow (2^31 · 2^32 = 2^63).
constexpr int64_t kMaxUsesPerCellStep = int64_t{1} << 31;

// token_quality's two-word fixed point: loss·2^8 = hi + lo/2^32, hi = floor(loss·2^8), lo in
// [0, 2^32]. With |loss| < 2^24 and at most 2^30 tokens per context per step (over all ranks)
// neither int64 sum can overflow (|Σhi| < 2^62, Σlo ≤ 2^62); the loss is kept to 2^-41.
constexpr double kLossHiScale = 256.0;
constexpr double kLossLoScale = 4294967296.0;
constexpr double kMaxAbsLoss = 16777216.0;           // 2^24
constexpr int64_t kMaxTokensPerContext = int64_t{1} << 30;

std::string shape_text(c10::IntArrayRef sizes) { return fmt::format("[{}]", fmt::join(sizes, ", ")); }

std::string describe(const at::Tensor& t) {
  if (!t.defined()) return "an undefined tensor";
  return fmt::format("{} {} on {}", shape_text(t.sizes()), dtype_name(t.scalar_type()), t.device().str());
}

}  // namespace

void TrustConfig::validate() const {
  TRUSTEP_CHECK_AS(OptionError, layers >= 1, "--layers must be >= 1, got {}", layers);
  TRUSTEP_CHECK_AS(OptionError, contexts >= 1, "--contexts must be >= 1, got {}", contexts);
  TRUSTEP_CHECK_AS(OptionError, experts >= 1, "--experts must be >= 1, got {}", experts);
  // Written as negations so that NaN fails too.
  TRUSTEP_CHECK_AS(OptionError, prior >= 0 && prior <= 1, "--trust-prior must be in [0, 1], got {}", prior);
  TRUSTEP_CHECK_AS(OptionError, min_evidence >= 0 && std::isfinite(min_evidence),
                   "--trust-min-evidence must be a finite number >= 0, got {}", min_evidence);
  TRUSTEP_CHECK_AS(OptionError, learning_rate > 0 && learning_rate <= 1, "--trust-lr must be in (0, 1], got {}",
                   learning_rate);
  // The accumulators hold 3 int64 per cell; keep every index far from int64 overflow.
  TRUSTEP_CHECK_AS(OptionError, layers <= (int64_t{1} << 40) / contexts / experts,
                   "--layers × --contexts × --experts = {} × {} × {} is too large for a trust table", layers,
                   contexts, experts);
}

TrustTable::TrustTable(const TrustConfig& config, c10::Device device) : config_(config), device_(device) {
  config_.validate();
  const auto options = at::TensorOptions().dtype(at::kFloat).device(device);
  trust_ = at::full({config_.layers, config_.contexts, config_.experts}, config_.prior, options);
  evidence_ = at::zeros({config_.layers, config_.contexts, config_.experts}, options);
  // The tensor's device carries a concrete index ("cuda" becomes "cuda:0"); inputs are compared to it.
  device_ = trust_.device();
  const int64_t cells = config_.layers * config_.contexts * config_.experts;
  acc_ = at::zeros({cells * 3 + config_.layers * 3}, options.dtype(at::kLong));
}

at::Tensor TrustTable::cells() const {
  const int64_t n = config_.layers * config_.contexts * config_.experts;
  return acc_.narrow(0, 0, n * 3).view({n, 3});
}

at::Tensor TrustTable::rejected() const {
  const int64_t n = config_.layers * config_.contexts * config_.experts;
  return acc_.narrow(0, n * 3, config_.layers * 3).view({config_.layers, 3});
}

void TrustTable::check_layer(int64_t layer, const char* where) const {
  TRUSTEP_CHECK(layer >= 0 && layer < config_.layers, "TrustTable::{}: layer {} is outside [0, {})", where, layer,
                config_.layers);
}

at::Tensor TrustTable::effective(int64_t layer) const {
  check_layer(layer, "effective");
  const at::Tensor evidenced = evidence_.select(0, layer).ge(config_.min_evidence);  // [C, E] bool
  return at::where(evidenced, trust_.select(0, layer), config_.prior);                // [C, E] fp32
}

at::Tensor TrustTable::evidenced_experts(int64_t layer) const {
  check_layer(layer, "evidenced_experts");
  return evidence_.select(0, layer).ge(config_.min_evidence).sum(1);  // [C] int64
}

void TrustTable::credit(int64_t layer, const at::Tensor& ctx, const at::Tensor& experts, const at::Tensor& weights,
                        const at::Tensor& quality) {
  check_layer(layer, "credit");
  const auto expect = [&](const at::Tensor& t, const char* name, int64_t ndim, at::ScalarType dtype,
                          const char* shape) {
    TRUSTEP_CHECK(t.defined() && t.dim() == ndim && t.scalar_type() == dtype && t.device() == device_,
                  "TrustTable::credit (layer {}): {} must be {} {} on {} (the table's device), got {}", layer, name,
                  shape, dtype_name(dtype), device_.str(), describe(t));
  };
  expect(ctx, "ctx", 1, at::kLong, "[T]");
  expect(experts, "experts", 2, at::kLong, "[T, k]");
  expect(weights, "weights", 2, at::kFloat, "[T, k]");
  expect(quality, "quality", 1, at::kFloat, "[T]");
  const int64_t T = ctx.size(0);
  const int64_t k = experts.size(1);
  TRUSTEP_CHECK(experts.size(0) == T && weights.sizes() == experts.sizes() && quality.size(0) == T,
                "TrustTable::credit (layer {}): shapes disagree: ctx {}, experts {}, weights {}, quality {} (expected "
                "[T], [T, k], [T, k], [T])",
                layer, shape_text(ctx.sizes()), shape_text(experts.sizes()), shape_text(weights.sizes()),
                shape_text(quality.sizes()));
  const int64_t C = config_.contexts, E = config_.experts;

  const at::Tensor slot_ctx = ctx.unsqueeze(1).expand({T, k});                          // [T, k] int64
  const at::Tensor used = experts.ge(0);                                                // [T, k] bool
  const at::Tensor bad_ctx = used.logical_and(slot_ctx.lt(0).logical_or(slot_ctx.ge(C)));  // [T, k]
  const at::Tensor bad_expert = experts.lt(-1).logical_or(experts.ge(E));              // [T, k]
  const at::Tensor w = weights.to(at::kDouble);                                         // [T, k] fp64
  const at::Tensor q = quality.to(at::kDouble).unsqueeze(1);                            // [T, 1] fp64
  // NaN fails every comparison, so it lands in bad_value rather than in the sums.
  const at::Tensor in_range = w.ge(0).logical_and(w.le(1)).logical_and(q.ge(0)).logical_and(q.le(1));  // [T, k]
  const at::Tensor index_ok = used.logical_and(bad_ctx.logical_not()).logical_and(bad_expert.logical_not());
  const at::Tensor bad_value = index_ok.logical_and(in_range.logical_not());  // [T, k]
  const at::Tensor ok = index_ok.logical_and(in_range);                       // [T, k] bool

  // fp32·fp32 is exact in fp64 and 2^32 is a power of two, so the only rounding is to the
  // nearest integer: the same on every device. Masked slots become 0 before the integer
  // cast (a NaN cast to int64 is undefined).
  const at::Tensor fixed = at::where(ok.unsqueeze(2), at::stack({w.mul(q), w}, 2).mul_(kTrustFixedPointScale).round_(),
                                     0.0)
                               .to(at::kLong);                                          // [T, k, 2] int64
  const at::Tensor source = at::cat({fixed, ok.unsqueeze(2).to(at::kLong)}, 2).view({T * k, 3});  // [T*k, 3]
  const at::Tensor cell = at::where(ok, slot_ctx.add(layer * C).mul(E).add(experts), 0).view({T * k});  // [T*k] int64
  // Integer adds: exact and order-independent even with CUDA atomics.
  cells().index_add_(0, cell, source);
  rejected().select(0, layer).add_(at::stack({bad_ctx.sum(), bad_expert.sum(), bad_value.sum()}));
}

void TrustTable::apply_step(comm::Communicator& comm) {
  comm.all_reduce(acc_, comm::ReduceOp::kSum, "trust.apply_step");
  const int64_t L = config_.layers, C = config_.contexts, E = config_.experts;
  const at::Tensor sums = cells().view({L, C, E, 3});  // [L, C, E, 3] int64: Σw·q, Σw, uses
  const at::Tensor uses = sums.select(3, 2);           // [L, C, E] int64

  // One small device-to-host copy per step: the rejection counters and the largest use count.
  const at::Tensor checks = at::cat({rejected().reshape(-1), uses.max().reshape(1)}).to(c10::kCPU);  // [L*3 + 1]
  const int64_t* c = checks.const_data_ptr<int64_t>();
  std::string problems;
  for (int64_t l = 0; l < L; ++l)
    for (int64_t i = 0; i < 3; ++i)
      if (c[l * 3 + i] > 0)
        problems += fmt::format("{}layer {}: {} slot(s) with {}", problems.empty() ? "" : "; ", l, c[l * 3 + i],
                                kRejectedWhat[i]);
  if (c[L * 3] > kMaxUsesPerCellStep)
    problems += fmt::format("{}{} uses of one (layer, context, expert) in one step exceed the fixed-point bound of {}",
                            problems.empty() ? "" : "; ", c[L * 3], kMaxUsesPerCellStep);
  if (!problems.empty()) {
    acc_.zero_();
    throw Error(fmt::format("TrustTable::apply_step: credit rejected (summed over all ranks; C = {}, E = {}): {}; the "
                            "table is unchanged [raised on every rank]",
                            C, E, problems),
                TRUSTEP_ORIGIN, /*collective=*/true);
  }

  // Separate, correctly rounded fp64 operations (no fused multiply-add), one rounding to
  // fp32: the same bits on every rank and every device.
  const at::Tensor wsum = sums.select(3, 1);                                             // [L, C, E] int64
  const at::Tensor qbar = sums.select(3, 0).to(at::kDouble).div(wsum.to(at::kDouble));      // [L, C, E] fp64, NaN where Σw = 0
  const at::Tensor updated = trust_.to(at::kDouble).mul(1.0 - config_.learning_rate).add(qbar.mul(config_.learning_rate))
                                 .to(at::kFloat);                                        // [L, C, E] fp32
  trust_.copy_(at::where(wsum.gt(0), updated, trust_));
  evidence_.copy_(evidence_.to(at::kDouble).add(uses.to(at::kDouble)).to(at::kFloat));
  acc_.zero_();
}

uint64_t TrustTable::digest() const {
  const std::vector<int64_t> shape{config_.layers, config_.contexts, config_.experts};
  uint64_t h = fnv1a(shape.data(), shape.size() * sizeof(int64_t));
  for (const at::Tensor& t : {trust_, evidence_}) {
    const at::Tensor host = t.to(c10::kCPU).contiguous();
    h = fnv1a(host.const_data_ptr(), host.nbytes(), h);
  }
  return h;
}

void TrustTable::check_consistent(comm::Communicator& comm) const {
  comm.check_agreement(digest(), "the trust table");
}

TensorMap TrustTable::state() const {
  return {{"trust.value", trust_.to(c10::kCPU, /*non_blocking=*/false, /*copy=*/true)},
          {"trust.evidence", evidence_.to(c10::kCPU, /*non_blocking=*/false, /*copy=*/true)}};
}

void TrustTable::load_state(const TensorMap& state) {
  const auto get = [&](const char* name) -> const at::Tensor& {
    const auto it = state.find(name);
    if (it == state.end()) {
      std::vector<std::string> names;
      for (const auto& [key, t] : state) names.push_back(key);
      throw Error(fmt::format("TrustTable::load_state: tensor '{}' is missing (present: [{}])", name,
                              fmt::join(names, ", ")),
                  TRUSTEP_ORIGIN);
    }
    return it->second;
  };
  set_tables(get("trust.value"), get("trust.evidence"));
}

void TrustTable::set_tables(const at::Tensor& trust, const at::Tensor& evidence) {
  const std::vector<int64_t> shape{config_.layers, config_.contexts, config_.experts};
  for (const auto& [name, t] : {std::pair{"trust.value", &trust}, std::pair{"trust.evidence", &evidence}}) {
    TRUSTEP_CHECK(t->defined(), "TrustTable: tensor '{}' is undefined", name);
    TRUSTEP_CHECK(t->scalar_type() == at::kFloat, "TrustTable: tensor '{}' has dtype {}, expected fp32", name,
                  dtype_name(t->scalar_type()));
    TRUSTEP_CHECK(t->sizes() == c10::IntArrayRef(shape),
                  "TrustTable: tensor '{}' has shape {}, expected [layers, contexts, experts] = {}", name,
                  shape_text(t->sizes()), shape_text(shape));
  }
  // Negated comparisons so that NaN is refused too.
  TRUSTEP_CHECK(trust.ge(0).logical_and(trust.le(1)).all().item<bool>(),
                "TrustTable: tensor 'trust.value' holds values outside [0, 1] or NaN");
  TRUSTEP_CHECK(evidence.ge(0).logical_and(evidence.isfinite()).all().item<bool>(),
                "TrustTable: tensor 'trust.evidence' holds negative or non-finite values");
  trust_.copy_(trust);
  evidence_.copy_(evidence);
  acc_.zero_();  // credit gathered for the replaced table does not carry over
}

at::Tensor token_quality(const at::Tensor& loss, const at::Tensor& ctx, int64_t contexts, double temperature,
                         comm::Communicator* comm) {
  TRUSTEP_CHECK_AS(OptionError, temperature > 0 && std::isfinite(temperature), "{} must be > 0, got {}",
                   kTemperatureOption, temperature);
  TRUSTEP_CHECK_AS(OptionError, contexts >= 1, "--contexts must be >= 1, got {}", contexts);
  TRUSTEP_CHECK(loss.defined() && loss.dim() == 1 && c10::isFloatingType(loss.scalar_type()),
                "token_quality: loss must be [T] of a floating dtype, got {}", describe(loss));
  TRUSTEP_CHECK(ctx.defined() && ctx.dim() == 1 && ctx.scalar_type() == at::kLong && ctx.size(0) == loss.size(0) &&
                    ctx.device() == loss.device(),
                "token_quality: ctx must be [T] int64 on loss's device with T = {} (loss is {}), got {}",
                loss.size(0), describe(loss), describe(ctx));
  const int64_t C = contexts;
  const at::Tensor l = loss.to(at::kFloat);                                            // [T] fp32
  const at::Tensor bad_ctx = ctx.lt(0).logical_or(ctx.ge(C));                          // [T] bool
  const at::Tensor bad_loss = l.abs().lt(kMaxAbsLoss).logical_not();                   // [T] bool, NaN too
  const at::Tensor ok = bad_ctx.logical_or(bad_loss).logical_not();                    // [T] bool
  const at::Tensor index = at::where(ok, ctx, 0);                                      // [T] int64
  const at::Tensor scaled = at::where(ok, l.to(at::kDouble).mul(kLossHiScale), 0.0);      // [T] fp64, exact
  const at::Tensor hi = scaled.floor();                                                // [T] fp64
  const at::Tensor lo = scaled.sub(hi).mul_(kLossLoScale).round_();                     // [T] fp64 in [0, 2^32]
  const at::Tensor per_token = at::stack({hi, lo, ok.to(at::kDouble)}, 1).to(at::kLong);  // [T, 3] int64

  // [3C + 2] int64: per-context Σhi, Σlo, count, then the two rejection counts.
  at::Tensor acc = at::zeros({3 * C + 2}, ctx.options());
  acc.narrow(0, 0, 3 * C).view({C, 3}).index_add_(0, index, per_token);
  acc.narrow(0, 3 * C, 2).copy_(at::stack({bad_ctx.sum(), bad_loss.sum()}));
  if (comm) comm->all_reduce(acc, comm::ReduceOp::kSum, "trust.token_quality");

  const at::Tensor per_ctx = acc.narrow(0, 0, 3 * C).view({C, 3});  // [C, 3] int64
  const at::Tensor checks = at::cat({acc.narrow(0, 3 * C, 2), per_ctx.select(1, 2).max().reshape(1)}).to(c10::kCPU);
  const int64_t* c = checks.const_data_ptr<int64_t>();
  const char* scope = comm ? " (summed over all ranks)" : "";
  if (c[0] > 0 || c[1] > 0 || c[2] > kMaxTokensPerContext) {
    const std::string message = fmt::format(
        "token_quality: {} token(s) with a context outside [0, {}), {} with a loss that is not finite or has "
        "|loss| >= 2^24, largest context count {} (at most 2^30 per step){}",
        c[0], C, c[1], c[2], scope);
    if (comm) throw Error(message + " [raised on every rank]", TRUSTEP_ORIGIN, /*collective=*/true);
    throw Error(message, TRUSTEP_ORIGIN);
  }

  const at::Tensor sum = per_ctx.select(1, 0).to(at::kDouble).div(kLossHiScale).add(
      per_ctx.select(1, 1).to(at::kDouble).div(kLossHiScale * kLossLoScale));  // [C] fp64
  // A context with no token anywhere gets NaN here, and no token indexes it.
  const at::Tensor mean = sum.div(per_ctx.select(1, 2).to(at::kDouble)).to(at::kFloat);  // [C] fp32
  return at::sigmoid(mean.index_select(0, ctx).sub(l).div(temperature));                 // [T] fp32
}

}  // namespace trustep::trust

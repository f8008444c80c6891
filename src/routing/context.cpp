#include "routing/context.h"

#include "comm/communicator.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/hash.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceType.h>
#include <fmt/ranges.h>

namespace trustep::routing {
namespace {

// Rows with a smaller norm are treated as zero vectors (they still count as assigned points).
constexpr double kNormFloor = 1e-12;
// load_state accepts rows whose norm is within this of 1 (bf16 rounding is ~2^-9).
constexpr double kUnitTolerance = 1e-2;

// What is wrong with one rank's batch in update(); it travels in the packed all-reduce (kind
// and detail slots) so that every rank can raise the same error.
enum class Problem : int64_t { kNone = 0, kUndefined, kDevice, kNdim, kDtype, kWidth };

// Problem slots per rank in update's packed tensor: kind, detail, rows with non-finite values.
constexpr int64_t kSlots = 3;

// A device as one int64 for a problem slot, and back.
int64_t encode_device(c10::Device d) { return static_cast<int64_t>(d.type()) * 65536 + (d.index() + 1); }
c10::Device decode_device(int64_t v) {
  return c10::Device(static_cast<c10::DeviceType>(v / 65536), static_cast<c10::DeviceIndex>(v % 65536 - 1));
}

std::string width_message(int64_t width, int64_t dim) {
  return fmt::format("context classifier: hidden states at boundary '{}' have {} columns, but the classifier's "
                     "hidden size (--hidden, ContextConfig::dim) is {}",
                     kContextQueryBoundary, width, dim);
}

// The per-update totals given to accumulate()/apply(): int64 [C, H] and [C] on the centroids' device.
void check_totals(const char* where, const at::Tensor& sums, const at::Tensor& batch_counts, int64_t C, int64_t H,
                  c10::Device device) {
  TRUSTEP_CHECK(sums.defined() && sums.dim() == 2 && sums.size(0) == C && sums.size(1) == H &&
                    sums.scalar_type() == at::kLong && sums.device() == device,
                "{}: 'sums' must be int64 [{}, {}] on {}", where, C, H, device.str());
  TRUSTEP_CHECK(batch_counts.defined() && batch_counts.dim() == 1 && batch_counts.size(0) == C &&
                    batch_counts.scalar_type() == at::kLong && batch_counts.device() == device,
                "{}: 'batch_counts' must be int64 [{}] on {}", where, C, device.str());
}

std::string shape_string(const at::Tensor& t) {
  return fmt::format("[{}]", fmt::join(t.sizes(), ", "));
}

}  // namespace

void ContextConfig::validate() const {
  if (contexts < 1)
    throw OptionError(fmt::format("invalid value '{}' for option '--contexts': the number of contexts must be >= 1",
                                  contexts),
                      TRUSTEP_ORIGIN);
  if (dim < 1)
    throw OptionError(
        fmt::format("invalid value '{}' for option '--hidden': the hidden size of the context classifier must be >= 1",
                    dim),
        TRUSTEP_ORIGIN);
}

ContextClassifier::ContextClassifier(const ContextConfig& config, c10::Device device, c10::ScalarType dtype,
                                     ContractPolicy policy, int rank)
    : config_(config),
      device_(device),
      dtype_(dtype),
      contract_{kContextQueryBoundary, dtype, device.type(), /*ndim=*/2, /*contiguous=*/false},
      checker_(std::make_unique<ContractChecker>(policy, rank)) {
  config_.validate();
  TRUSTEP_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf || dtype == at::kDouble,
                "context classifier: dtype {} is not supported (fp32, bf16, fp16 or fp64)", dtype_name(dtype));
  // Drawn on the CPU in fp32 from the seed alone, then cast and moved: identical on every rank
  // and every device.
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(config_.seed);
  at::Tensor init = at::randn({config_.contexts, config_.dim}, gen, at::TensorOptions().dtype(at::kFloat));  // [C, H]
  init = init.div(at::linalg_vector_norm(init, 2, {1}, /*keepdim=*/true));
  centroids_ = init.to(dtype_).to(device_).contiguous();                                   // [C, H]
  counts_ = at::zeros({config_.contexts}, at::TensorOptions().dtype(at::kLong).device(device_));  // [C]
}

ContextClassifier::ContextClassifier(ContextClassifier&&) noexcept = default;
ContextClassifier& ContextClassifier::operator=(ContextClassifier&&) noexcept = default;
ContextClassifier::~ContextClassifier() = default;

at::Tensor ContextClassifier::assign(const at::Tensor& query) const {
  // Cosine argmax without normalising the query: a positive per-row scale does not change the
  // argmax, and it saves a pass over [T, H] on the hot path. A zero row scores 0 everywhere -> 0.
  // argmax returns the first maximal index, so ties go to the lowest centroid.
  return at::mm(query, centroids_.t()).argmax(1);  // [T, C] -> [T] int64
}

at::Tensor ContextClassifier::checked_query(const at::Tensor& hidden) const {
  const at::Tensor query = checker_->enforce(contract_, hidden);  // [T, H] dtype
  TRUSTEP_CHECK(query.size(1) == config_.dim, "{}", width_message(query.size(1), config_.dim));
  // The contract compares device types only; the matmul needs the very device.
  TRUSTEP_CHECK(query.device() == device_, "context classifier: hidden states at boundary '{}' are on {}, the "
                "centroids on {}", kContextQueryBoundary, query.device().str(), device_.str());
  return query;
}

at::Tensor ContextClassifier::classify(const at::Tensor& hidden) const { return assign(checked_query(hidden)); }

at::Tensor ContextClassifier::accumulate_checked(const at::Tensor& query, at::Tensor& sums, at::Tensor& batch_counts,
                                                 at::Tensor& nonfinite_rows) const {
  const at::Tensor assignments = assign(query);  // [T] int64
  // Normalise in fp32 (fp64 for an fp64 classifier); the clamp makes |u| <= 1 hold whatever the
  // rounding of the norm, which the overflow bound relies on.
  const auto compute = dtype_ == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor x = query.to(compute);                                         // [T, H]
  nonfinite_rows = x.isfinite().logical_not().any(1).sum();                       // [] int64, stays on device
  const at::Tensor norm = at::linalg_vector_norm(x, 2, {1}, /*keepdim=*/true);    // [T, 1]
  // nan_to_num only keeps the int64 conversion defined; a batch with such rows is refused.
  const at::Tensor unit = x.div(norm.clamp_min(kNormFloor)).nan_to_num(0.0).clamp(-1.0, 1.0);  // [T, H]
  // Scaling by 2^32 is exact in binary floating point; round() then gives an integer <= 2^32.
  const at::Tensor fixed = unit.mul(kContextFixedPointScale).round().to(at::kLong);  // [T, H] int64
  // Integer adds are exact and commutative, so the sums do not depend on order or atomics.
  sums.index_add_(0, assignments, fixed);
  batch_counts.index_add_(0, assignments, at::ones({query.size(0)}, batch_counts.options()));
  return assignments;
}

at::Tensor ContextClassifier::accumulate(const at::Tensor& hidden, at::Tensor& sums, at::Tensor& batch_counts) const {
  const int64_t C = config_.contexts, H = config_.dim;
  check_totals("ContextClassifier::accumulate", sums, batch_counts, C, H, device_);
  const at::Tensor query = checked_query(hidden);  // [T, H] dtype
  // Into scratch copies first, so that a refused batch leaves the caller's totals alone.
  at::Tensor s = sums.clone(), n = batch_counts.clone(), nonfinite;
  at::Tensor assignments = accumulate_checked(query, s, n, nonfinite);
  const int64_t bad = nonfinite.item<int64_t>();
  TRUSTEP_CHECK(bad == 0, "ContextClassifier::accumulate: {} hidden rows at boundary '{}' have non-finite values",
                bad, kContextQueryBoundary);
  sums.copy_(s);
  batch_counts.copy_(n);
  return assignments;
}

void ContextClassifier::apply(const at::Tensor& sums, const at::Tensor& batch_counts) {
  const int64_t C = config_.contexts, H = config_.dim;
  check_totals("ContextClassifier::apply", sums, batch_counts, C, H, device_);
  const at::Tensor host = batch_counts.to(at::kCPU);  // [C], one sync per update (not the hot path)
  const int64_t* m = host.data_ptr<int64_t>();
  for (int64_t c = 0; c < C; ++c) {
    TRUSTEP_CHECK(m[c] >= 0, "ContextClassifier::apply: 'batch_counts'[{}] = {} is negative", c, m[c]);
    TRUSTEP_CHECK(m[c] <= kMaxTokensPerContext,
                  "ContextClassifier::apply: {} tokens for context {} in one update exceed the fixed-point bound "
                  "{} (int64 sums could overflow)",
                  m[c], c, kMaxTokensPerContext);
  }
  apply_totals(sums, batch_counts);
}

void ContextClassifier::apply_totals(const at::Tensor& sums, const at::Tensor& m) {
  // Same inputs (exact integers) and the same device arithmetic on every rank -> same bits.
  // Sculley's mini-batch step with a per-centroid rate m_c / n_c, done in fp64 and cast once.
  const at::Tensor n = counts_.add(m);                                                   // [C] int64
  const at::Tensor mean = sums.to(at::kDouble)
                              .mul(1.0 / kContextFixedPointScale)
                              .div(m.clamp_min(1).to(at::kDouble).unsqueeze(1));       // [C, H]
  const at::Tensor eta = m.to(at::kDouble).div(n.clamp_min(1).to(at::kDouble));          // [C]
  const at::Tensor c = centroids_.to(at::kDouble);                                       // [C, H]
  const at::Tensor moved = c.add(eta.unsqueeze(1).mul(mean.sub(c)));                      // [C, H]
  const at::Tensor norm = at::linalg_vector_norm(moved, 2, {1}, /*keepdim=*/true);       // [C, 1]
  const at::Tensor next = moved.div(norm.clamp_min(kNormFloor)).to(dtype_);              // [C, H]
  // Centroids with no points this batch stay; so does one whose new direction is zero.
  const at::Tensor keep = m.unsqueeze(1).eq(0).logical_or(norm.le(kNormFloor));          // [C, 1]
  centroids_ = at::where(keep, centroids_, next).contiguous();
  counts_ = n;
}

at::Tensor ContextClassifier::update(const at::Tensor& hidden, comm::Communicator& comm) {
  const int64_t C = config_.contexts, H = config_.dim, world = comm.size();
  // One packed int64 tensor, one all-reduce: [C*H sums | C counts | 3 problem slots per rank].
  at::Tensor packed = at::zeros({C * H + C + kSlots * world}, at::TensorOptions().dtype(at::kLong).device(device_));
  at::Tensor sums = packed.narrow(0, 0, C * H).view({C, H});   // [C, H]
  at::Tensor batch_counts = packed.narrow(0, C * H, C);          // [C]

  // Checked without throwing: a rank that threw here would leave its peers in the all-reduce.
  auto [query, report] = checker_->repair(contract_, hidden);
  Problem problem = Problem::kNone;
  int64_t detail = 0;
  if (!query.defined()) {
    problem = Problem::kUndefined;
  } else if (report.kind == Mismatch::kDevice || (!report && query.device() != device_)) {
    problem = Problem::kDevice;
    detail = encode_device(query.device());
  } else if (report.kind == Mismatch::kNdim) {
    problem = Problem::kNdim;
    detail = query.dim();
  } else if (report.kind == Mismatch::kDtype) {
    problem = Problem::kDtype;
    detail = static_cast<int64_t>(to_wire(query.scalar_type()));
  } else if (query.size(1) != H) {
    problem = Problem::kWidth;
    detail = query.size(1);
  }

  at::Tensor assignments;
  const int64_t slot = C * H + C + kSlots * comm.rank();
  if (problem == Problem::kNone) {
    at::Tensor nonfinite;
    assignments = accumulate_checked(query, sums, batch_counts, nonfinite);
    packed.narrow(0, slot + 2, 1).add_(nonfinite);  // on the device: no sync before the all-reduce
  } else {
    packed.narrow(0, slot, 1).fill_(static_cast<int64_t>(problem));
    packed.narrow(0, slot + 1, 1).fill_(detail);
  }
  comm.all_reduce(packed, comm::ReduceOp::kSum, "context.update");

  // Counts and problem slots in one host copy; the decisions below depend only on reduced values,
  // so every rank takes the same branch.
  const at::Tensor tail = packed.narrow(0, C * H, C + kSlots * world).to(at::kCPU);  // [C + 3*world]
  const int64_t* v = tail.data_ptr<int64_t>();
  for (int64_t r = 0; r < world; ++r) {
    const auto kind = static_cast<Problem>(v[C + kSlots * r]);
    const int64_t value = v[C + kSlots * r + 1];
    const int64_t nonfinite = v[C + kSlots * r + 2];
    if (nonfinite > 0)
      throw Error(fmt::format("context update: {} hidden rows of rank {} at boundary '{}' have non-finite values "
                              "[raised on every rank]",
                              nonfinite, r, kContextQueryBoundary),
                  TRUSTEP_ORIGIN, /*collective=*/true);
    if (kind == Problem::kNone) continue;
    if (kind == Problem::kWidth)
      throw Error(fmt::format("{} (rank {}, context update) [raised on every rank]", width_message(value, H), r),
                  TRUSTEP_ORIGIN, /*collective=*/true);
    std::string expected, actual;
    switch (kind) {
      case Problem::kUndefined:
        expected = "a defined tensor";
        actual = "an undefined tensor";
        break;
      case Problem::kDevice:
        expected = device_.type() == decode_device(value).type() ? device_.str()
                                                                 : c10::DeviceTypeName(device_.type(), true);
        actual = decode_device(value).str();
        break;
      case Problem::kNdim:
        expected = "ndim 2";
        actual = fmt::format("ndim {}", value);
        break;
      default:
        expected = dtype_name(dtype_);
        actual = wire_dtype_name(value);
        break;
    }
    throw ContractViolation(
        violation_message(kContextQueryBoundary, static_cast<int>(r), -1, expected, actual) + " [raised on every rank]",
        TRUSTEP_ORIGIN, /*collective=*/true, kContextQueryBoundary, expected, actual, static_cast<int>(r));
  }
  for (int64_t c = 0; c < C; ++c)
    if (v[c] > kMaxTokensPerContext)
      throw Error(fmt::format("context update: {} tokens for context {} in one update (all ranks) exceed the "
                              "fixed-point bound {} [raised on every rank]",
                              v[c], c, kMaxTokensPerContext),
                  TRUSTEP_ORIGIN, /*collective=*/true);

  apply_totals(sums, batch_counts);
  return assignments;
}

uint64_t ContextClassifier::digest() const {
  const at::Tensor c = centroids_.to(at::kCPU).contiguous();
  const at::Tensor n = counts_.to(at::kCPU).contiguous();
  uint64_t h = fnv1a(c.const_data_ptr(), c.nbytes());
  return fnv1a(n.const_data_ptr(), n.nbytes(), h);
}

void ContextClassifier::check_consistent(comm::Communicator& comm) const {
  comm.check_agreement(digest(), "the context centroids");
}

std::map<std::string, at::Tensor> ContextClassifier::state() const {
  const auto cpu = at::TensorOptions().device(at::kCPU);
  return {{kContextCentroidsKey, centroids_.to(cpu, /*non_blocking=*/false, /*copy=*/true)},
          {kContextCountsKey, counts_.to(cpu, /*non_blocking=*/false, /*copy=*/true)}};
}

void ContextClassifier::load_state(const std::map<std::string, at::Tensor>& state) {
  const int64_t C = config_.contexts, H = config_.dim;
  const std::string where = "ContextClassifier::load_state";
  for (const auto& [name, tensor] : state)
    TRUSTEP_CHECK(name.rfind("context.", 0) != 0 || name == kContextCentroidsKey || name == kContextCountsKey,
                  "{}: unknown entry '{}' (expected '{}' and '{}')", where, name, kContextCentroidsKey,
                  kContextCountsKey);
  const auto get = [&](const char* key) {
    auto it = state.find(key);
    TRUSTEP_CHECK(it != state.end() && it->second.defined(), "{}: missing entry '{}'", where, key);
    return it->second;
  };
  const at::Tensor c = get(kContextCentroidsKey);  // [C, H]
  const at::Tensor n = get(kContextCountsKey);     // [C]
  TRUSTEP_CHECK(c.dim() == 2 && c.size(0) == C && c.size(1) == H, "{}: '{}' has shape {}, expected [{}, {}]", where,
                kContextCentroidsKey, shape_string(c), C, H);
  TRUSTEP_CHECK(c.scalar_type() == dtype_, "{}: '{}' has dtype {}, expected the classifier's dtype {}", where,
                kContextCentroidsKey, dtype_name(c.scalar_type()), dtype_name(dtype_));
  TRUSTEP_CHECK(n.dim() == 1 && n.size(0) == C, "{}: '{}' has shape {}, expected [{}]", where, kContextCountsKey,
                shape_string(n), C);
  TRUSTEP_CHECK(n.scalar_type() == at::kLong, "{}: '{}' has dtype {}, expected int64", where, kContextCountsKey,
                dtype_name(n.scalar_type()));
  TRUSTEP_CHECK(n.min().item<int64_t>() >= 0, "{}: '{}' has a negative count", where, kContextCountsKey);
  const at::Tensor c32 = c.to(at::kFloat);
  TRUSTEP_CHECK(c32.isfinite().all().item<bool>(), "{}: '{}' has non-finite values", where, kContextCentroidsKey);
  const double worst =
      at::linalg_vector_norm(c32, 2, {1}).sub(1.0).abs().max().item<double>();  // [C] -> scalar
  TRUSTEP_CHECK(worst <= kUnitTolerance, "{}: '{}' rows are not unit vectors (|norm - 1| up to {:.3g})", where,
                kContextCentroidsKey, worst);
  const auto on_device = at::TensorOptions().device(device_);
  centroids_ = c.to(on_device, /*non_blocking=*/false, /*copy=*/true).contiguous();
  counts_ = n.to(on_device, /*non_blocking=*/false, /*copy=*/true).contiguous();
}

}  // namespace trustep::routing

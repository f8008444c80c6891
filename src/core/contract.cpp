#include "core/contract.h"

#include "core/dtype.h"
#include "core/error.h"
#include "core/log.h"

namespace trustep {

ContractPolicy parse_policy(const std::string& name, const std::string& option) {
  if (name == "strict") return ContractPolicy::kStrict;
  if (name == "cast") return ContractPolicy::kCast;
  throw OptionError(fmt::format("invalid value '{}' for option '{}': expected strict or cast", name, option),
                    TRUSTEP_ORIGIN);
}

const char* policy_name(ContractPolicy policy) {
  return policy == ContractPolicy::kCast ? "cast" : "strict";
}

MismatchReport find_mismatch(const Contract& contract, const at::Tensor& t) {
  if (!t.defined()) return {Mismatch::kNdim, "a defined tensor", "an undefined tensor"};
  if (contract.device && t.device().type() != *contract.device)
    return {Mismatch::kDevice, c10::DeviceTypeName(*contract.device, true), c10::DeviceTypeName(t.device().type(), true)};
  if (contract.ndim >= 0 && t.dim() != contract.ndim)
    return {Mismatch::kNdim, fmt::format("ndim {}", contract.ndim), fmt::format("ndim {}", t.dim())};
  if (t.scalar_type() != contract.dtype)
    return {Mismatch::kDtype, dtype_name(contract.dtype), dtype_name(t.scalar_type())};
  if (contract.contiguous && !t.is_contiguous()) return {Mismatch::kNotContiguous, "contiguous", "non-contiguous"};
  return {};
}

std::string violation_message(const std::string& boundary, int rank, int layer, const std::string& expected,
                              const std::string& actual) {
  std::string where = layer >= 0 ? fmt::format("rank {}, layer {}", rank, layer) : fmt::format("rank {}", rank);
  return fmt::format("contract violation at boundary '{}' ({}): expected {}, got {}", boundary, where, expected,
                     actual);
}

std::pair<at::Tensor, MismatchReport> ContractChecker::repair(const Contract& contract, const at::Tensor& t) {
  MismatchReport report = find_mismatch(contract, t);
  if (!report || policy_ != ContractPolicy::kCast) return {t, report};
  if (report.kind != Mismatch::kDtype && report.kind != Mismatch::kNotContiguous) return {t, report};

  at::Tensor fixed = t.to(contract.dtype).contiguous();
  bool first = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ++casts_[contract.boundary];
    first = warned_.insert(contract.boundary).second;
  }
  if (first)
    log::warn("contract policy 'cast' at boundary '{}' (rank {}): converted {} to {}; further casts here are "
              "counted, not logged",
              contract.boundary, rank_, report.actual, report.expected);
  return {fixed, find_mismatch(contract, fixed)};
}

at::Tensor ContractChecker::enforce(const Contract& contract, const at::Tensor& t, int layer) {
  auto [out, report] = repair(contract, t);
  if (report)
    throw ContractViolation(violation_message(contract.boundary, rank_, layer, report.expected, report.actual),
                            TRUSTEP_ORIGIN, /*collective=*/false, contract.boundary, report.expected,
                            report.actual, rank_);
  return out;
}

int64_t ContractChecker::casts(const std::string& boundary) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = casts_.find(boundary);
  return it == casts_.end() ? 0 : it->second;
}

int64_t ContractChecker::total_casts() const {
  std::lock_guard<std::mutex> lock(mutex_);
  int64_t n = 0;
  for (const auto& [name, count] : casts_) n += count;
  return n;
}

}  // namespace trustep

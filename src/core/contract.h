// Dtype contracts: a boundary is a named point where a tensor crosses a module or rank edge.
// Each boundary declares dtype, device and ndim; checks either throw ContractViolation
// (policy strict) or cast once, count and warn once (policy cast). See docs/dtype-contracts.md.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>

namespace trustep {

// Bumped whenever the wire header layout or the meaning of a boundary changes; ranks built
// from different versions refuse to exchange.
constexpr int64_t kContractVersion = 1;

// Boundary names of the DESIGN.md table.
namespace boundary {
constexpr const char* kRouterLogits = "router.logits";
constexpr const char* kTrustTable = "trust.table";
constexpr const char* kSelectorWeights = "selector.weights";
constexpr const char* kDispatchSend = "dispatch.send";
constexpr const char* kDispatchRecv = "dispatch.recv";
constexpr const char* kExpertIn = "expert.in";
constexpr const char* kExpertOut = "expert.out";
constexpr const char* kCombineSend = "combine.send";
constexpr const char* kCombineRecv = "combine.recv";
constexpr const char* kCombineOut = "combine.out";
constexpr const char* kContextQuery = "context.query";  // hidden states given to the context classifier
}  // namespace boundary

enum class ContractPolicy : int64_t { kStrict = 0, kCast = 1 };
ContractPolicy parse_policy(const std::string& name, const std::string& option);
const char* policy_name(ContractPolicy policy);

struct Contract {
  std::string boundary;                    // e.g. "dispatch.send"
  c10::ScalarType dtype;                   // declared dtype
  std::optional<c10::DeviceType> device;   // nullopt: any device
  int64_t ndim = -1;                       // -1: any
  bool contiguous = true;
};

// What is wrong with a tensor against a contract; kNone when it conforms.
enum class Mismatch : int64_t { kNone = 0, kDtype, kDevice, kNdim, kNotContiguous };

struct MismatchReport {
  Mismatch kind = Mismatch::kNone;
  std::string expected;  // e.g. "bf16", "cuda", "ndim 2", "contiguous"
  std::string actual;
  explicit operator bool() const { return kind != Mismatch::kNone; }
};

MismatchReport find_mismatch(const Contract& contract, const at::Tensor& t);

// Holds the policy and the cast counters of one process. Thread-safe.
class ContractChecker {
 public:
  explicit ContractChecker(ContractPolicy policy = ContractPolicy::kStrict, int rank = 0)
      : policy_(policy), rank_(rank) {}

  // Returns `t` when it conforms. Under kCast a dtype or contiguity mismatch is repaired
  // (cast/copy once, counted, warned once per boundary); anything else throws.
  // Local check only: use it where no collective follows, or before one that every rank
  // reaches regardless (comm/ folds the check into its header exchange instead).
  at::Tensor enforce(const Contract& contract, const at::Tensor& t, int layer = -1);

  // Applies the cast policy without throwing; returns the (possibly repaired) tensor and
  // the mismatch that remains.
  std::pair<at::Tensor, MismatchReport> repair(const Contract& contract, const at::Tensor& t);

  ContractPolicy policy() const { return policy_; }
  int rank() const { return rank_; }
  int64_t casts(const std::string& boundary) const;
  int64_t total_casts() const;

 private:
  ContractPolicy policy_;
  int rank_;
  mutable std::mutex mutex_;
  std::map<std::string, int64_t> casts_;
  std::set<std::string> warned_;
};

// Formats the one message every violation uses:
// "contract violation at boundary 'B' (rank R[, layer L]): expected X, got Y"
std::string violation_message(const std::string& boundary, int rank, int layer,
                              const std::string& expected, const std::string& actual);

}  // namespace trustep

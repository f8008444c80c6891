// Context classification: ctx[t] = the nearest of C centroids (by cosine) of a token's hidden
// state. Centroids are learnt online with mini-batch spherical k-means; every rank keeps
// bit-identical centroids because an update all-reduces exact int64 fixed-point sums and then
// applies the same arithmetic everywhere. See docs/trust-model.md, "Contexts".
#pragma once

#include "core/contract.h"

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>

namespace trustep::comm {
class Communicator;
}

namespace trustep::routing {

// Contract boundary of the queries (hidden states) given to classify/update.
constexpr const char* kContextQueryBoundary = boundary::kContextQuery;
// Names in state() / load_state().
constexpr const char* kContextCentroidsKey = "context.centroids";
constexpr const char* kContextCountsKey = "context.counts";

// Fixed point of the update's sums: a normalised component x in [-1, 1] contributes
// round(x * 2^32). With at most kMaxTokensPerContext tokens per context per update (summed over
// ranks), |sum| <= (2^31 - 1) * 2^32 < 2^63, so int64 sums cannot overflow.
constexpr double kContextFixedPointScale = 4294967296.0;  // 2^32
constexpr int64_t kMaxTokensPerContext = (int64_t{1} << 31) - 1;

struct ContextConfig {
  int64_t contexts = 4;  // C >= 1 (--contexts)
  int64_t dim = 0;       // hidden size H >= 1 (--hidden)
  uint64_t seed = 0;     // centroid initialisation, identical on every rank
  // Throws OptionError naming the option.
  void validate() const;
};

// Online mini-batch spherical k-means over L2-normalised hidden states (Sculley 2010). Move-only.
class ContextClassifier {
 public:
  // dtype: fp32, bf16, fp16 or fp64; centroids and queries share it. `rank` only names this
  // process in contract violations raised by classify().
  ContextClassifier(const ContextConfig& config, c10::Device device, c10::ScalarType dtype,
                    ContractPolicy policy = ContractPolicy::kStrict, int rank = 0);
  ContextClassifier(ContextClassifier&&) noexcept;
  ContextClassifier& operator=(ContextClassifier&&) noexcept;
  ~ContextClassifier();

  // hidden [T, H] -> ctx [T] int64: argmax over c of cos(hidden[t], centroid[c]), ties to the
  // lowest index; T = 0 is normal. The query is checked against "context.query" (dtype = the
  // classifier's dtype, device type of the centroids, ndim 2) with the policy; H must equal dim.
  // Hot path: one matmul [T, H] x [H, C] and an argmax on the device, no host sync.
  at::Tensor classify(const at::Tensor& hidden) const;

  // Collective: every rank calls it, possibly with T = 0. Assigns this rank's batch (as
  // classify), all-reduces per-centroid fixed-point sums of the normalised rows and counts (one
  // all-reduce of one packed int64 tensor), then applies the same update on every rank.
  // A bad batch on any rank (contract, H, device, non-finite values) becomes the same collective
  // error on every rank and changes nothing. Returns this rank's assignments [T] int64.
  at::Tensor update(const at::Tensor& hidden, comm::Communicator& comm);

  // The two halves of update(), public so that one process can replay an update from several
  // ranks' batches (the MPI consistency test does). accumulate() adds the batch's fixed-point
  // sums into `sums` [C, H] int64 and its assignment counts into `batch_counts` [C] int64 (both
  // on the centroids' device) and returns the assignments [T]; a bad batch throws locally and
  // adds nothing.
  // apply() performs the update for the totals, exactly as update() does after its all-reduce.
  at::Tensor accumulate(const at::Tensor& hidden, at::Tensor& sums, at::Tensor& batch_counts) const;
  void apply(const at::Tensor& sums, const at::Tensor& batch_counts);

  const ContextConfig& config() const { return config_; }
  c10::ScalarType dtype() const { return dtype_; }
  c10::Device device() const { return device_; }
  const at::Tensor& centroids() const { return centroids_; }  // [C, H] classifier dtype, unit rows
  const at::Tensor& counts() const { return counts_; }        // [C] int64, points assigned so far (global)
  // Cast counters of the "context.query" boundary (policy cast).
  const ContractChecker& contracts() const { return *checker_; }

  // FNV-1a over the centroid bytes, then the count bytes (host copies).
  uint64_t digest() const;
  // Collective: the same CommError on every rank unless all ranks hold identical state.
  void check_consistent(comm::Communicator& comm) const;

  // {"context.centroids" [C, H] dtype, "context.counts" [C] int64}, CPU copies.
  std::map<std::string, at::Tensor> state() const;
  // Needs both keys; other "context.*" keys are errors, keys of other modules are ignored (one
  // checkpoint map may hold every module's state). Checks shapes, dtypes, unit finite rows and
  // non-negative counts before changing anything.
  void load_state(const std::map<std::string, at::Tensor>& state);

 private:
  // The query after the contract, width and device checks (throws locally).
  at::Tensor checked_query(const at::Tensor& hidden) const;
  // Assignments of an already checked query [T, H].
  at::Tensor assign(const at::Tensor& query) const;
  // Adds the fixed-point sums and counts of a checked query; returns the assignments and sets
  // `nonfinite_rows` to the number of rows with NaN/inf (0-dim int64 on the device, no sync).
  at::Tensor accumulate_checked(const at::Tensor& query, at::Tensor& sums, at::Tensor& batch_counts,
                                at::Tensor& nonfinite_rows) const;
  // The update for reduced totals whose counts are known to be within the fixed-point bound.
  void apply_totals(const at::Tensor& sums, const at::Tensor& batch_counts);

  ContextConfig config_;
  c10::Device device_;
  c10::ScalarType dtype_;
  Contract contract_;
  std::unique_ptr<ContractChecker> checker_;  // counts casts from const classify(); owns a mutex
  at::Tensor centroids_;                      // [C, H] dtype, on device_, unit rows
  at::Tensor counts_;                         // [C] int64 on device_
};

}  // namespace trustep::routing

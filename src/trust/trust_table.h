// The per-(layer, context, expert) trust table: how good an expert has been for tokens of
// a context, learnt from per-token quality during training, identical on every rank.
// Formulas, exactness and bounds: docs/trust-model.md. File formats: docs/formats.md.
#pragma once

#include "comm/communicator.h"
#include "core/safetensors.h"

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <string>

namespace trustep::trust {

struct TrustConfig {
  int64_t layers = 1;
  int64_t contexts = 1;
  int64_t experts = 8;
  double prior = 0.5;          // trust of an expert without evidence
  double min_evidence = 16;    // token-slot uses before stored trust replaces the prior
  double learning_rate = 0.1;  // η of the EMA update
  // Throws OptionError naming the CLI option: --layers, --contexts, --experts, --trust-prior,
  // --trust-min-evidence, --trust-lr.
  void validate() const;
};

// Fixed-point scale of the weighted sums accumulated by credit(): 2^32 units per unit of
// gate weight (or weight × quality). Integer sums make the cross-rank reduction exact and
// independent of order (see docs/trust-model.md for the overflow bound).
constexpr double kTrustFixedPointScale = 4294967296.0;

class TrustTable {
 public:
  TrustTable(const TrustConfig& config, c10::Device device);
  // A copy would share the tensors (LibTorch handles), so there is none; moves are fine.
  TrustTable(const TrustTable&) = delete;
  TrustTable& operator=(const TrustTable&) = delete;
  TrustTable(TrustTable&&) = default;
  TrustTable& operator=(TrustTable&&) = default;

  const TrustConfig& config() const { return config_; }
  const at::Tensor& trust() const { return trust_; }        // [L, C, E] fp32, starts at the prior
  const at::Tensor& evidence() const { return evidence_; }  // [L, C, E] fp32, integer-valued uses

  // [C, E] fp32: stored trust where evidence >= min_evidence, else the prior.
  at::Tensor effective(int64_t layer) const;
  // [C] int64: experts with evidence >= min_evidence in each context.
  at::Tensor evidenced_experts(int64_t layer) const;

  // Adds this step's credit for one layer to local accumulators; no communication, no host
  // synchronisation. ctx [T] int64 in [0, C); experts [T, k] int64 in [0, E), or -1 for an
  // empty or dropped slot (skipped); weights [T, k] fp32 gate weights in [0, 1]; quality [T]
  // fp32 in [0, 1]. All on the table's device. Each slot (t, j) with experts[t, j] >= 0 adds
  // weight·quality and weight (fixed point) and one use to (layer, ctx[t], experts[t, j]).
  // Values outside those ranges are not credited but counted; apply_step() reports them.
  void credit(int64_t layer, const at::Tensor& ctx, const at::Tensor& experts, const at::Tensor& weights,
              const at::Tensor& quality);

  // Collective, once per step on every rank: one int64 all-reduce of the accumulators, then
  // where the step's weight sum > 0: q̄ = Σw·q / Σw, τ ← (1−η)·τ + η·q̄ (fp64, rounded once
  // to fp32); everywhere: evidence += uses. Clears the accumulators. Bit-identical result on
  // every rank, reproducible run to run; int64 sums cannot overflow below 2^31 uses per cell
  // per step over all ranks (checked).
  // Throws a collective Error (same on every rank, table unchanged) if any rank credited
  // invalid slots since the last step.
  void apply_step(comm::Communicator& comm);

  // FNV-1a over the shape and the bytes of trust and evidence (CPU copies).
  uint64_t digest() const;
  // Collective: the same CommError on every rank unless all ranks hold identical tables.
  void check_consistent(comm::Communicator& comm) const;

  // {"trust.value": [L, C, E], "trust.evidence": [L, C, E]}, fp32 CPU copies.
  TensorMap state() const;
  // Replaces trust and evidence from `state` (other keys are ignored) and clears pending
  // credit. Checks presence, dtype, shape and value ranges; errors name the tensor.
  void load_state(const TensorMap& state);

  // Reputation store (SQLite, schema in docs/formats.md): export replaces run `run`'s rows
  // in one transaction; import loads run `run`, which must exist with this table's shape.
  void export_sqlite(const std::string& path, const std::string& run) const;
  void import_sqlite(const std::string& path, const std::string& run);

 private:
  at::Tensor cells() const;     // [L*C*E, 3] int64 view of acc_: Σw·q, Σw, uses
  at::Tensor rejected() const;  // [L, 3] int64 view of acc_: bad context, bad expert, bad value
  void check_layer(int64_t layer, const char* where) const;
  void set_tables(const at::Tensor& trust, const at::Tensor& evidence);

  TrustConfig config_;
  c10::Device device_;
  at::Tensor trust_;     // [L, C, E] fp32
  at::Tensor evidence_;  // [L, C, E] fp32
  at::Tensor acc_;       // [L*C*E*3 + L*3] int64: cells() then rejected(), reduced in one call
};

// Option name of the quality temperature, used in its OptionError.
constexpr const char* kTemperatureOption = "--trust-temperature";

// Per-token quality q_t = sigmoid((mean_loss[ctx_t] − loss_t) / temperature) in fp32: a token
// whose loss is below its context's mean scores above 0.5. The per-context means are over
// all ranks when `comm` is given (one int64 all-reduce of fixed-point sums and counts, so the
// means are exact and identical everywhere), else over this rank's tokens.
// loss [T] any float dtype (used as fp32), ctx [T] int64 in [0, contexts). Returns [T] fp32
// on loss's device. temperature must be > 0 (OptionError naming --trust-temperature).
// Non-finite or huge (|loss| >= 2^24) losses, contexts out of range and more than 2^30 tokens
// in one context per step throw an Error (a collective one when `comm` is given).
at::Tensor token_quality(const at::Tensor& loss, const at::Tensor& ctx, int64_t contexts, double temperature,
                         comm::Communicator* comm);

}  // namespace trustep::trust

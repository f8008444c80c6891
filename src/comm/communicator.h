// The one interface through which ranks talk. Knows tensors, counts and dtype contracts;
// knows nothing about experts or tokens.
//
// Every public collective (1) checks its arguments locally without throwing, (2) exchanges a
// small header with all ranks (comm/wire_header.h) so that a bad argument or a contract
// violation on any rank becomes the same error on every rank, (3) moves the data through the
// backend, all of it under the watchdog. Backends implement only the data movement.
#pragma once

#include "comm/watchdog.h"
#include "core/contract.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace trustep::comm {

enum class Backend { kAuto, kMpi, kNccl, kSelf };
Backend parse_backend(const std::string& name, const std::string& option);
const char* backend_name(Backend backend);

enum class ReduceOp : int64_t { kSum = 0, kMax = 1, kMin = 2 };

struct CommOptions {
  Backend backend = Backend::kAuto;
  double timeout_s = 300;                           // watchdog limit per collective
  ContractPolicy policy = ContractPolicy::kStrict;  // for all_to_all_v contracts
};

struct AllToAllResult {
  at::Tensor recv;                   // [sum(recv_counts), W], rows grouped by source rank
  std::vector<int64_t> recv_counts;  // [world] rows received from each rank
};

// What one all_to_all_v moved (recorded while record_exchanges is on): enough to replay the same
// bytes, e.g. to time the bare exchanges of a training step against the step itself.
struct ExchangeRecord {
  std::string boundary;
  c10::ScalarType dtype = c10::ScalarType::Undefined;
  c10::Device device = c10::Device(c10::kCPU);
  int64_t width = 0;                 // elements per row
  std::vector<int64_t> send_counts;  // [world] rows this rank sent to each rank
};

class Communicator {
 public:
  virtual ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return world_; }
  virtual const char* name() const = 0;

  // send: [N, W] rows; send_counts[p] rows go to rank p, in order; sum(send_counts) == N.
  // `contract` declares the dtype/device/ndim of `send` (applied with the configured policy).
  // Receives rows from every rank, grouped by source. Uneven and zero counts are normal.
  // `recv_buffer` (optional) is reused across calls and grown when too small; the result is
  // then a view of it, valid until the next call with the same buffer. Reuse matters: a fresh
  // multi-MiB CPU allocation per call faults its pages in again (16 MiB per peer measured at
  // 0.17 of raw MPI_Alltoallv without reuse, ~1.0 with it).
  AllToAllResult all_to_all_v(const at::Tensor& send, const std::vector<int64_t>& send_counts,
                              const Contract& contract, int layer = -1, at::Tensor* recv_buffer = nullptr);

  // In place; fp16/bf16 are reduced in fp32 on MPI. `tag` names the caller in errors.
  void all_reduce(at::Tensor& t, ReduceOp op = ReduceOp::kSum, const std::string& tag = "");
  // Returns [world, *t.shape].
  at::Tensor all_gather(const at::Tensor& t, const std::string& tag = "");
  void broadcast(at::Tensor& t, int root, const std::string& tag = "");
  void barrier(const std::string& tag = "");

  // Small host-side all-gather of int64s (world * v.size() values, rank-major), under the
  // watchdog. Used for headers and agreement checks; every rank must pass the same length.
  std::vector<int64_t> all_gather_i64(const std::vector<int64_t>& v, const std::string& tag = "");

  // Every rank's text, in rank order, on every rank (two all-gathers: lengths, then the bytes).
  std::vector<std::string> all_gather_text(const std::string& text, const std::string& tag = "");

  // Throws the same CommError on every rank unless all ranks pass the same value.
  void check_agreement(uint64_t value, const std::string& what);
  // Collective. `settings` holds "key=value" lines. Ranks that pass different lines all throw
  // the same CommError, naming each key that differs and which ranks hold which value
  // ("'--dtype' is 'fp32' on rank 0, 'bf16' on rank 1"). One 8-byte all-gather when they agree.
  void check_same_settings(const std::string& settings, const std::string& what);

  // Runs `work` (no collectives inside) on every rank, then lets the ranks compare notes: if it
  // threw anywhere, every rank throws the same collective Error naming `what`, the failing
  // ranks and their messages (one message when all agree). Local failures such as a bad file
  // then end the job cleanly on every rank instead of aborting it from one.
  void fail_together(const std::function<void()>& work, const std::string& what);

  // Waits until this rank's collectives have finished on the device (NCCL runs them on the
  // current CUDA stream); a no-op for host backends, whose collectives are synchronous.
  virtual void synchronize() {}

  // Records every all_to_all_v from now on (off by default); take_exchanges() hands them over.
  void record_exchanges(bool on) { recording_ = on; }
  std::vector<ExchangeRecord> take_exchanges() { return std::exchange(exchanges_, {}); }

  ContractChecker& contracts() { return contracts_; }
  Watchdog& watchdog() { return *watchdog_; }
  int64_t collectives_started() const { return seq_; }

  // Terminates every rank of the job (MPI_Abort / ncclCommAbort). Used for local errors
  // that would otherwise leave peers waiting.
  [[noreturn]] virtual void abort_job(int exit_code, const std::string& why) = 0;

 protected:
  Communicator(int rank, int world, const CommOptions& options);
  // Starts the watchdog; backends call it once their abort path works.
  void start_watchdog();

  // Data movement only; arguments have been verified on all ranks. `send` [N, W] and
  // `recv` [sum(recv_counts), W] are contiguous, same dtype and device.
  virtual void do_all_to_all_v(const at::Tensor& send, const std::vector<int64_t>& send_counts,
                               const std::vector<int64_t>& recv_counts, at::Tensor& recv, const OpInfo& info) = 0;
  virtual void do_all_reduce(at::Tensor& t, ReduceOp op, const OpInfo& info) = 0;
  virtual at::Tensor do_all_gather(const at::Tensor& t, const OpInfo& info) = 0;
  virtual void do_broadcast(at::Tensor& t, int root, const OpInfo& info) = 0;
  virtual void do_barrier(const OpInfo& info) = 0;
  virtual void do_all_gather_i64(const int64_t* in, int64_t n, int64_t* out) = 0;

 private:
  struct Entered;
  // Local checks + header exchange + verification. Returns the (possibly cast) send tensor.
  Entered enter(int op, const at::Tensor* t, const Contract* contract, int layer,
                const std::vector<int64_t>* counts, int64_t arg, const std::string& tag);

  int rank_;
  int world_;
  CommOptions options_;
  ContractChecker contracts_;
  std::unique_ptr<Watchdog> watchdog_;
  int64_t seq_ = 0;
  bool recording_ = false;
  std::vector<ExchangeRecord> exchanges_;
};

// Creates the communicator for this process. `auto` picks nccl when this build has CUDA and
// a GPU is visible, else mpi. MPI must be initialised (see comm/mpi_runtime.h) except for `self`.
std::unique_ptr<Communicator> make_communicator(const CommOptions& options);
// Throws OptionError when this build cannot provide `backend` (nccl without CUDA). Needs no MPI,
// so the CLI calls it with the other option checks, before any rank starts talking.
void require_backend_built(Backend backend);

}  // namespace trustep::comm

// World of one: every collective is a local copy. No MPI needed.
#pragma once

#include "comm/communicator.h"

namespace trustep::comm {

class SelfCommunicator : public Communicator {
 public:
  explicit SelfCommunicator(const CommOptions& options);
  const char* name() const override { return "self"; }
  [[noreturn]] void abort_job(int exit_code, const std::string& why) override;

 protected:
  void do_all_to_all_v(const at::Tensor& send, const std::vector<int64_t>& send_counts,
                       const std::vector<int64_t>& recv_counts, at::Tensor& recv, const OpInfo& info) override;
  void do_all_reduce(at::Tensor& t, ReduceOp op, const OpInfo& info) override;
  at::Tensor do_all_gather(const at::Tensor& t, const OpInfo& info) override;
  void do_broadcast(at::Tensor& t, int root, const OpInfo& info) override;
  void do_barrier(const OpInfo& info) override;
  void do_all_gather_i64(const int64_t* in, int64_t n, int64_t* out) override;
};

}  // namespace trustep::comm

// MPI backend: CPU tensors directly, CUDA tensors through host staging. Also the control
// plane (headers, agreement checks) for the NCCL backend, which derives from it.
#pragma once

#include "comm/communicator.h"

#include <mpi.h>

namespace trustep::comm {

class MpiCommunicator : public Communicator {
 public:
  explicit MpiCommunicator(const CommOptions& options);
  ~MpiCommunicator() override;
  const char* name() const override { return "mpi"; }
  [[noreturn]] void abort_job(int exit_code, const std::string& why) override;
  MPI_Comm comm() const { return comm_; }

 protected:
  void do_all_to_all_v(const at::Tensor& send, const std::vector<int64_t>& send_counts,
                       const std::vector<int64_t>& recv_counts, at::Tensor& recv, const OpInfo& info) override;
  void do_all_reduce(at::Tensor& t, ReduceOp op, const OpInfo& info) override;
  at::Tensor do_all_gather(const at::Tensor& t, const OpInfo& info) override;
  void do_broadcast(at::Tensor& t, int root, const OpInfo& info) override;
  void do_barrier(const OpInfo& info) override;
  void do_all_gather_i64(const int64_t* in, int64_t n, int64_t* out) override;

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
};

// Throws CommError naming the MPI call and the error string when `code` is not MPI_SUCCESS.
void check_mpi(int code, const char* call, const OpInfo* info = nullptr);

}  // namespace trustep::comm
